"""The vmdk format driver (QEMU's block/vmdk.c, rebuilt on the driver interface)."""
