"""The VDI (VirtualBox) image format."""
