"""VDI consistency check, with the findings and the stderr lines of QEMU's.

QEMU checks only the block map against itself: every allocated entry must be below
``blocks_in_image``, no two guest blocks may share a data block, and the number of
allocated entries must be the header's ``blocks_allocated``.  It repairs nothing.
"""
from __future__ import annotations

from array import array

from ...core.driver import CheckResult
from .layout import Header, is_allocated


def check_bmap(header: Header, bmap: array) -> CheckResult:
    """Judge the block map of ``header``; the messages are QEMU's (which names the data
    block twice where it means to name the first user)."""
    result = CheckResult()
    total = header.blocks_in_image
    used = bytearray(total)
    allocated = 0
    for block, entry in enumerate(bmap):
        if not is_allocated(entry):
            continue
        if entry >= total:
            result.messages.append(f"ERROR: block index {block} too large, is {entry}")
            result.corruptions += 1
            continue
        allocated += 1
        if used[entry]:
            result.messages.append(f"ERROR: block index {entry} also used by {entry}")
            result.corruptions += 1
        else:
            used[entry] = 1
    if allocated != header.blocks_allocated:
        result.messages.append(f"ERROR: allocated blocks mismatch, is {allocated}, "
                               f"should be {header.blocks_allocated}")
        result.corruptions += 1
    return result
