"""The qcow2 format (docs/interop/qcow2.txt), split by concern."""
