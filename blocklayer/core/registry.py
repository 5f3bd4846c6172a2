"""Drivers by name, imported lazily (so a tool that does little starts fast).

Add a driver by adding a line to ``DRIVERS``: name -> "module:Class".
"""
from __future__ import annotations

import importlib

from .driver import BlockDriver
from .errors import InvalidArgument

DRIVERS: dict[str, str] = {
    "file": "blocklayer.protocols.file:FileDriver",
    "host_device": "blocklayer.protocols.file:HostDeviceDriver",
    "host_cdrom": "blocklayer.protocols.file:HostCdromDriver",
    "null-co": "blocklayer.protocols.null:NullDriver",
    "null-aio": "blocklayer.protocols.null:NullAioDriver",
    "nbd": "blocklayer.protocols.nbd:NBDDriver",
    "raw": "blocklayer.formats.raw:RawDriver",
    "blkdebug": "blocklayer.filters.blkdebug:BlkdebugDriver",
    "throttle": "blocklayer.filters.throttle:ThrottleDriver",
    "copy-on-read": "blocklayer.filters.copy_on_read:CopyOnReadDriver",
    "copy-before-write": "blocklayer.filters.copy_before_write:CopyBeforeWriteDriver",
    "snapshot-access": "blocklayer.filters.snapshot_access:SnapshotAccessDriver",
    "qcow2": "blocklayer.formats.qcow2.driver:Qcow2Driver",
    "qed": "blocklayer.formats.qed.driver:QedDriver",
    "vdi": "blocklayer.formats.vdi.driver:VdiDriver",
    "vpc": "blocklayer.formats.vpc.driver:VpcDriver",
    "vmdk": "blocklayer.formats.vmdk.driver:VmdkDriver",
}

#: formats that take part in probing, in the order QEMU asks them (the first of equal
#: scores wins: an image with both QED's and VDI's magic is QED, with VDI's and
#: qcow2's or vpc's it is VDI)
PROBED_FORMATS = ("qed", "vdi", "vmdk", "qcow2", "vpc", "raw")

#: the magic a probed format's header starts with: a header without it is not that
#: format, and its driver is not even imported (probing then costs no start-up)
PROBE_MAGIC: dict[str, bytes] = {
    "qcow2": b"QFI\xfb",
    "qed": b"QED\x00",
    "vpc": b"conectix",
}

#: URL-like prefixes that name a protocol driver ("nbd://host/x", "null-co://")
PROTOCOL_PREFIXES: dict[str, str] = {
    "file": "file",
    "host_device": "host_device",
    "host_cdrom": "host_cdrom",
    "null-co": "null-co",
    "null-aio": "null-aio",
    "nbd": "nbd", "nbd+tcp": "nbd", "nbd+unix": "nbd",
    "blkdebug": "blkdebug",
}

PROBE_BUF_SIZE = 2048


def available(name: str) -> bool:
    return name in DRIVERS and _load(name) is not None


def _load(name: str) -> type[BlockDriver] | None:
    module_name, _, cls_name = DRIVERS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(module_name.rsplit(".", 1)[0]):
            return None
        raise
    return getattr(module, cls_name)


def get_driver(name: str) -> type[BlockDriver]:
    """The driver class called ``name``, or QEMU's error."""
    if name not in DRIVERS:
        raise InvalidArgument(f"Unknown driver '{name}'")
    cls = _load(name)
    if cls is None:
        raise InvalidArgument(f"Unknown driver '{name}'")
    return cls


def format_names() -> list[str]:
    """Every driver name that loads (for ``--help``)."""
    return sorted(n for n in DRIVERS if _load(n) is not None)


def probe_format(header: bytes, filename: str | None) -> str:
    """The format whose probe scores highest; ``raw`` when nothing else matches."""
    best, best_score = "raw", 0
    for name in PROBED_FORMATS:
        if name not in DRIVERS or not header.startswith(PROBE_MAGIC.get(name, b"")):
            continue
        cls = _load(name)
        if cls is None:
            continue
        score = cls.probe(header, filename)
        if score > best_score:
            best, best_score = name, score
    return best


def protocol_for(filename: str) -> str:
    """The protocol driver a filename asks for (``nbd://...`` -> nbd), else ``file``."""
    head = filename.split(":", 1)[0] if ":" in filename else ""
    if "/" in head:
        return "file"
    if head in PROTOCOL_PREFIXES:
        return PROTOCOL_PREFIXES[head]
    if head.startswith("nbd"):
        return "nbd"
    return _host_protocol(filename)


def _host_protocol(path: str) -> str:
    """QEMU's probe of host devices: ``/dev/cdrom*`` is a CD-ROM, another character or
    block device a ``host_device``, anything else a ``file``."""
    import os
    import stat
    if path.startswith("/dev/cdrom"):
        return "host_cdrom"
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return "file"
    return "host_device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "file"
