"""blocklayer-storage-daemon: qemu-storage-daemon controlled over QMP (not implemented yet)."""
from __future__ import annotations

from .common import not_implemented


def main() -> None:
    not_implemented("blocklayer-storage-daemon")
