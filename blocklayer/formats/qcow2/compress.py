"""Compressed clusters: deflate (raw, no zlib header, window 2^12 as QEMU writes) and
zstd.  Decompression never produces more than one cluster."""
from __future__ import annotations

import io
import zlib
from typing import Any, Sequence

from ...core.errors import BlockError, NotSupported
from .layout import COMPRESSION_ZLIB, COMPRESSION_ZSTD


def compress(kind: int, data: bytes | bytearray | memoryview, limit: int) -> bytes | None:
    """Compressed ``data``, or None when it does not fit in ``limit`` bytes."""
    return compress_many(kind, [data], limit)[0]


def compress_many(kind: int, chunks: Sequence[bytes | bytearray | memoryview],
                  limit: int) -> list[bytes | None]:
    """:func:`compress` of each chunk (one zstd context serves them all).  zlib and
    zstd release the GIL, so worker threads running this use all the cores."""
    out: list[bytes | None] = []
    if kind == COMPRESSION_ZLIB:
        for data in chunks:
            c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
            res = c.compress(data) + c.flush()
            out.append(res if len(res) <= limit else None)
    elif kind == COMPRESSION_ZSTD:
        z = _zstd().ZstdCompressor()
        for data in chunks:
            res = z.compress(data)
            out.append(res if len(res) <= limit else None)
    else:
        raise NotSupported(f"qcow2: unknown compression type: {kind}")
    return out


def decompress(kind: int, data: bytes | bytearray, cluster_size: int) -> bytes:
    """Exactly one cluster from ``data``; anything else is an I/O error."""
    try:
        if kind == COMPRESSION_ZLIB:
            out = zlib.decompressobj(-15).decompress(data, cluster_size)
        elif kind == COMPRESSION_ZSTD:
            reader = _zstd().ZstdDecompressor().stream_reader(io.BytesIO(data))
            parts, got = [], 0
            while got < cluster_size:
                chunk = reader.read(cluster_size - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
            out = b"".join(parts)
        else:
            raise NotSupported(f"qcow2: unknown compression type: {kind}")
    except (zlib.error, ValueError) as exc:
        raise BlockError(f"qcow2: could not decompress cluster: {exc}") from None
    except Exception as exc:      # zstandard.ZstdError
        if type(exc).__name__ == "ZstdError":
            raise BlockError(f"qcow2: could not decompress cluster: {exc}") from None
        raise
    if len(out) != cluster_size:
        raise BlockError("qcow2: compressed cluster does not decompress to one cluster")
    return out


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise NotSupported("qcow2: zstd compression needs the 'zstandard' package") from None
    return zstandard
