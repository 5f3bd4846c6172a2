"""Protocol, format-agnostic and filter drivers.  Formats live in :mod:`blocklayer.formats`."""
