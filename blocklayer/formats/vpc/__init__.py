"""The VHD (Virtual PC) image format, QEMU's vpc."""
