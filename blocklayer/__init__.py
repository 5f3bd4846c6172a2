"""blocklayer: QEMU's block layer in Python.

    import asyncio, blocklayer

    async def main():
        node = await blocklayer.open_image("disk.qcow2")
        await node.write(0, b"hello")
        print(await node.read(0, 5))
        await node.close()

    asyncio.run(main())

``BlockFile`` is the synchronous, file-like view.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
QEMU_VERSION = "7.2.22"

__all__ = ["open_image", "create_image", "BlockFile", "BlockGraph", "BlockNode", "BlockError",
           "OpenFlags", "CacheMode", "ReqFlag", "Status"]

if TYPE_CHECKING:
    from .core.create import create_image
    from .core.driver import ReqFlag, Status
    from .core.errors import BlockError
    from .core.node import BlockGraph, BlockNode
    from .core.open import open_image
    from .core.options import CacheMode, OpenFlags
    from .syncfile import BlockFile

_LAZY = {
    "open_image": "core.open", "create_image": "core.create", "BlockFile": "syncfile",
    "BlockGraph": "core.node", "BlockNode": "core.node", "BlockError": "core.errors",
    "OpenFlags": "core.options", "CacheMode": "core.options", "ReqFlag": "core.driver", "Status": "core.driver",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
