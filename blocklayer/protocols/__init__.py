"""Protocol drivers: where bytes are stored (file, host_device, null; the NBD client)."""
