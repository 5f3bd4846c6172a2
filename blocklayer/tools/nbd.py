"""blocklayer-nbd: qemu-nbd's command line (not implemented yet)."""
from __future__ import annotations

from .common import not_implemented


def main() -> None:
    not_implemented("blocklayer-nbd")
