"""qemu-nbd's command line: options in order, each checked as qemu-nbd checks it, then
the checks between them, each failure with qemu-nbd's words."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import NoReturn

from ...core.errors import InvalidArgument
from ...core.options import CacheMode, split_keyval
from ...nbd import wire
from ..io.getopt import Getopt, GetoptError
from .helptext import usage, version
from .objects import Objects

SHORT = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L"
LONG = {
    "help": (False, "h"), "version": (False, "V"), "bind": (True, "b"),
    "port": (True, "p"), "socket": (True, "k"), "offset": (True, "o"),
    "read-only": (False, "r"), "allocation-depth": (False, "A"), "bitmap": (True, "B"),
    "connect": (True, "c"), "disconnect": (False, "d"), "list": (False, "L"),
    "snapshot": (False, "s"), "load-snapshot": (True, "l"), "nocache": (False, "n"),
    "cache": (True, "cache"), "aio": (True, "aio"), "discard": (True, "discard"),
    "detect-zeroes": (True, "detect-zeroes"), "shared": (True, "e"),
    "format": (True, "f"), "persistent": (False, "t"), "export-name": (True, "x"),
    "description": (True, "D"), "verbose": (False, "v"), "object": (True, "object"),
    "tls-creds": (True, "tls-creds"), "tls-authz": (True, "tls-authz"),
    "image-opts": (False, "image-opts"), "trace": (True, "T"), "fork": (False, "fork"),
    "pid-file": (True, "pid-file"), "selinux-label": (True, "selinux-label"),
}
AIO_MODES = ("threads", "native", "io_uring")
DISCARD_MODES = {"ignore": False, "off": False, "unmap": True, "on": True}
DETECT_ZEROES = ("off", "on", "unmap")


@dataclass
class Invocation:
    prog: str                       # basename(argv[0]): the prefix of messages
    argv0: str = ""                 # argv[0] as given: usage and "Try ..." lines
    bind: str | None = None
    port: str | None = None
    socket: str | None = None
    offset: int = 0
    read_only: bool = False
    snapshot: bool = False
    load_snapshot: str | None = None
    cache: CacheMode = CacheMode()
    seen_cache: bool = False
    aio: str = "threads"
    seen_aio: bool = False
    discard_unmap: bool = False
    seen_discard: bool = False
    detect_zeroes: str = "off"
    seen_detect_zeroes: bool = False
    shared: int = 1
    fmt: str | None = None
    persistent: bool = False
    export_name: str | None = None
    description: str | None = None
    verbose: bool = False
    allocation_depth: bool = False
    bitmaps: list[str] = field(default_factory=list)
    device: str | None = None
    disconnect: bool = False
    list_mode: bool = False
    image_opts: bool = False
    tls_creds: str | None = None
    tls_authz: str | None = None
    fork: bool = False
    pid_file: str | None = None
    selinux_label: str | None = None
    objects: Objects = field(default_factory=Objects)
    trace: list[str] = field(default_factory=list)
    filename: str | None = None

    def fail(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}\n")
        raise SystemExit(1)


def parse(argv0: str, argv: list[str]) -> Invocation:
    """The invocation, or SystemExit once qemu-nbd's message is printed."""
    prog = os.path.basename(argv0)
    inv = Invocation(prog, argv0)
    opts = Getopt(argv0, argv, SHORT, LONG)
    try:
        for opt, arg in opts:
            _option(inv, opt, arg)
    except GetoptError as exc:
        sys.stderr.write(f"{exc}\n{prog}: Try `{argv0} --help' for more information.\n")
        raise SystemExit(1) from None
    _check(inv, opts.operands)
    return inv


def _option(inv: Invocation, opt: str, arg: str | None) -> None:
    value = arg or ""
    if opt == "h":
        sys.stdout.write(usage(inv.argv0))
        raise SystemExit(0)
    if opt == "V":
        sys.stdout.write(version(inv.prog))
        raise SystemExit(0)
    if opt in ("n", "cache"):
        _cache(inv, "none" if opt == "n" else value)
    elif opt == "aio":
        if inv.seen_aio:
            inv.fail("--aio can only be specified once")
        if value not in AIO_MODES:
            inv.fail(f"Invalid aio mode '{value}'")
        inv.aio, inv.seen_aio = value, True
    elif opt == "discard":
        if inv.seen_discard:
            inv.fail("--discard can only be specified once")
        if value not in DISCARD_MODES:
            inv.fail(f"Invalid discard mode `{value}'")
        inv.discard_unmap, inv.seen_discard = DISCARD_MODES[value], True
    elif opt == "detect-zeroes":
        _detect_zeroes(inv, value)
    elif opt == "o":
        if not value.isdigit():
            inv.fail(f"Invalid offset '{value}'")
        inv.offset = int(value)
    elif opt == "l":
        inv.load_snapshot = value
        _check_snapshot_param(inv, value)
        inv.read_only = True
    elif opt == "e":
        inv.shared = _shared(inv, value)
    elif opt in ("x", "D"):
        what = "export name" if opt == "x" else "export description"
        if len(value.encode()) > wire.MAX_STRING_SIZE:
            inv.fail(f"{what} '{value}' too long")
        if opt == "x":
            inv.export_name = value
        else:
            inv.description = value
    elif opt == "B":
        inv.bitmaps.insert(0, value)         # qemu-nbd prepends each -B
    elif opt == "object":
        try:
            inv.objects.add(value)
        except InvalidArgument as exc:
            inv.fail(exc.message)
    elif opt == "T":
        inv.trace.append(value)
    else:
        _simple(inv, opt, value)


_FLAGS = {"r": "read_only", "s": "snapshot", "d": "disconnect", "v": "verbose",
          "t": "persistent", "A": "allocation_depth", "L": "list_mode",
          "image-opts": "image_opts", "fork": "fork"}
_VALUES = {"b": "bind", "p": "port", "k": "socket", "c": "device", "f": "fmt",
           "tls-creds": "tls_creds", "tls-authz": "tls_authz", "pid-file": "pid_file",
           "selinux-label": "selinux_label"}


def _simple(inv: Invocation, opt: str, value: str) -> None:
    if opt in _FLAGS:
        setattr(inv, _FLAGS[opt], True)
    else:
        setattr(inv, _VALUES[opt], value)


def _cache(inv: Invocation, mode: str) -> None:
    if inv.seen_cache:
        inv.fail("-n and --cache can only be specified once")
    try:
        inv.cache = CacheMode.parse(mode)
    except InvalidArgument:
        inv.fail(f"Invalid cache mode `{mode}'")
    inv.seen_cache = True


def _detect_zeroes(inv: Invocation, mode: str) -> None:
    if mode not in DETECT_ZEROES:
        inv.fail(f"Failed to parse detect_zeroes mode: invalid parameter value: {mode}")
    if mode == "unmap" and not inv.discard_unmap:
        inv.fail("setting detect-zeroes to unmap is not allowed without setting "
                 "discard operation to unmap")
    inv.detect_zeroes, inv.seen_detect_zeroes = mode, True


def _shared(inv: Invocation, value: str) -> int:
    try:
        shared = int(value, 0)
    except ValueError:
        inv.fail(f"Invalid shared device number '{value}'")
    if shared < 0 or shared >= 1 << 31:
        inv.fail(f"Invalid shared device number '{value}'")
    return shared


def _check_snapshot_param(inv: Invocation, spec: str) -> None:
    if not spec.startswith("snapshot."):
        return
    try:
        keys = split_keyval(spec)
    except InvalidArgument as exc:
        inv.fail(exc.message)
    for key in keys:
        if key not in ("snapshot.id", "snapshot.name"):
            inv.fail(f"Invalid parameter '{key}'\n{inv.prog}: Failed in parsing snapshot "
                     f"param `{spec}'")


def _check(inv: Invocation, operands: list[str]) -> None:
    """What qemu-nbd checks once every option is in."""
    if inv.list_mode:
        if operands:
            inv.fail("List mode is incompatible with a file name")
        if (inv.export_name is not None or inv.offset or inv.bitmaps
                or inv.disconnect or inv.device or inv.allocation_depth or inv.seen_cache
                or inv.seen_discard or inv.seen_aio or inv.fmt or inv.image_opts
                or inv.seen_detect_zeroes):
            inv.fail("List mode is incompatible with per-device settings")
        if inv.fork:
            inv.fail("List mode is incompatible with forking")
    elif len(operands) != 1:
        sys.stderr.write(f"{inv.prog}: Invalid number of arguments\n"
                         f"Try `{inv.argv0} --help' for more information.\n")
        raise SystemExit(1)
    else:
        inv.filename = operands[0]
        if inv.export_name is None:
            inv.export_name = ""
    if inv.selinux_label is not None and inv.socket is None:
        inv.fail("--selinux-label is not permitted without --socket")
    if inv.tls_creds:
        if inv.device:
            inv.fail("TLS is not supported with a host device")
        if inv.tls_authz and inv.list_mode:
            inv.fail("TLS authorization is incompatible with export list")
    elif inv.tls_authz:
        inv.fail("--tls-authz is not permitted without --tls-creds")
