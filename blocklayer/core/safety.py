"""Untrusted images: open nothing an image names, cap what opening may cost, and say
what an image would have opened.

One switch for every tool and the library: ``--untrusted`` on a tool's command line, or
``BLOCKLAYER_UNTRUSTED=1`` in the environment (scripts, services).  In that mode

* every host file an image names is refused with one error naming it: backing files,
  data files, and through them anything a ``json:`` name would bring in (blkdebug
  configs, other protocols) — :func:`apply` turns off
  :attr:`OpenFlags.allow_external_files`, which the open path and the formats check;
* opening (where the tables load) runs under a memory cap (the process address space,
  1 GiB by default, ``BLOCKLAYER_UNTRUSTED_MEMORY`` in bytes) and a time budget
  (:data:`OPEN_SECONDS`), as OpenStack runs ``qemu-img info`` under prlimit;
* ``info --output=json`` adds a ``safety`` section (:func:`report`): the external
  references with their kinds, and whether the image is dirty, corrupt or encrypted,
  read from the header without opening any of them.

``blocklayer-nbd`` and the daemon use the same pieces: :func:`pop_option` on argv,
:func:`enable` once, and the open path does the rest.
"""
from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BlockError

if TYPE_CHECKING:
    from .node import BlockNode
    from .options import OpenFlags

T = TypeVar("T")

OPTION = "--untrusted"
ENV = "BLOCKLAYER_UNTRUSTED"
ENV_MEMORY = "BLOCKLAYER_UNTRUSTED_MEMORY"
MEMORY_BYTES = 1 << 30
OPEN_SECONDS = 30.0
_TRUE = ("1", "on", "yes", "true")


class Untrusted(BlockError):
    """Refused in untrusted mode."""


def enabled() -> bool:
    """Whether untrusted mode is on for this process (the option sets the variable,
    so child processes inherit it)."""
    return os.environ.get(ENV, "").strip().lower() in _TRUE


def pop_option(argv: list[str]) -> list[str]:
    """Remove ``--untrusted`` from a tool's argv (before its own parser sees it) and
    turn the mode on if it was there; returns the remaining arguments."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    if OPTION not in head:
        return argv
    rest = list(argv)
    rest.remove(OPTION)
    enable()
    return rest


def enable() -> None:
    """Turn untrusted mode on for this process and cap its memory."""
    os.environ[ENV] = "1"
    limit_memory()


def limit_memory() -> None:
    """Cap the address space (never raise an existing cap)."""
    try:
        want = int(os.environ.get(ENV_MEMORY, MEMORY_BYTES))
    except ValueError:
        want = MEMORY_BYTES
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > want:
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def apply(flags: OpenFlags) -> OpenFlags:
    """The flags an open uses: in untrusted mode no file an image names is opened."""
    if enabled() and flags.allow_external_files:
        return flags.with_(allow_external_files=False)
    return flags


async def bounded_open(opening: Awaitable[T], name: str | None) -> T:
    """Run an open under the time budget in untrusted mode; out of memory is an error
    naming the image, not a traceback."""
    if not enabled():
        return await opening
    try:
        return await asyncio.wait_for(opening, OPEN_SECONDS)
    except TimeoutError:
        raise Untrusted(f"opening '{name}' took longer than {OPEN_SECONDS:g} s "
                        "(untrusted mode)") from None
    except MemoryError:
        raise Untrusted(f"opening '{name}' needs more memory than untrusted mode "
                        "allows") from None


def refuse(kind: str, name: str) -> Untrusted:
    """The one error for a file an image names: raise what this returns."""
    return Untrusted(f"opening {kind} '{name}' named by the image is not allowed")


def report(node: BlockNode) -> dict[str, Any]:
    """What the image at ``node`` (opened for metadata only) would open and how it
    stands; nothing it names is opened."""
    drv = node.driver
    refs: list[dict[str, Any]] = []
    if node.backing_file:
        ref: dict[str, Any] = {"kind": "backing", "filename": node.backing_file}
        if node.backing_format:
            ref["format"] = node.backing_format
        refs.append(ref)
    data_file = drv.data_file_name()
    if data_file is not None:
        refs.append({"kind": "data-file", "filename": data_file})
    for ref in refs:
        name = str(ref["filename"])
        ref["json"] = name.startswith("json:")
        ref["protocol"] = ":" in name.split("/", 1)[0] and not ref["json"]
    info = drv.get_info()
    return {
        "external-references": refs,
        "dirty": bool(info.is_dirty),
        "corrupt": bool(info.is_corrupt),
        "encrypted": bool(info.encrypted),
    }
