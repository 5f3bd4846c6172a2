"""``info``: what an image is, as qemu-img prints it (human or JSON, optionally the
whole backing chain)."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from blocklayer.core import safety
from blocklayer.core.errors import BlockError

from .args import UsageError, output_format, parse
from .common import close_all, dump_human, new_graph, open_img, to_qjson

if TYPE_CHECKING:
    from blocklayer.core.driver import SnapshotInfo
    from blocklayer.core.node import BlockNode


def main(argv: list[str]) -> int:
    p = parse(argv, "f:hU", ["format=", "output=", "backing-chain", "object=", "image-opts",
                             "force-share"])
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    out = output_format(p.last("--output"))
    return asyncio.run(info(p.args[0], p.last("-f", "--format"), out,
                            chain=p.has("--backing-chain"), image_opts=p.has("--image-opts"),
                            force_share=p.has("-U", "--force-share")))


async def info(filename: str, fmt: str | None, out: str, *, chain: bool,
               image_opts: bool, force_share: bool) -> int:
    from blocklayer.core.open import full_backing_filename
    graph = new_graph()
    infos: list[dict[str, Any]] = []
    seen: set[str] = set()
    name, cur_fmt, opts = filename, fmt, image_opts
    while True:
        if name in seen:
            raise BlockError(f"Backing file '{name}' creates an infinite loop.")
        seen.add(name)
        node = await open_img(graph, name, fmt=cur_fmt, image_opts=opts, read_only=True,
                              force_share=force_share, backing=False, no_io=True)
        try:
            infos.append(await image_info(node))
            if safety.enabled():
                infos[-1]["safety"] = safety.report(node)
        finally:
            await close_all(node)
        if not chain or not node.backing_file:
            break
        if safety.enabled():
            raise safety.refuse("backing file", node.backing_file)
        name = full_backing_filename(node.filename, node.backing_file)
        cur_fmt, opts = node.backing_format, False
    if out == "json":
        print(to_qjson(infos if chain else infos[0]))
    else:
        print("\n".join(human(i) for i in infos), end="")
    return 0


async def image_info(node: "BlockNode") -> dict[str, Any]:
    """An ImageInfo (QAPI field order, which decides ties in QEMU's key order)."""
    from blocklayer.core.open import full_backing_filename
    from blocklayer.tools.io.cmd_image import _has_info
    drv = node.driver
    dinfo = drv.get_info()
    out: dict[str, Any] = {"filename": node.filename, "format": node.format_name}
    if _has_info(node):             # QEMU: only when bdrv_get_info answers (not nbd)
        out["dirty-flag"] = bool(dinfo.is_dirty)
    actual = await node.allocated_file_size()
    if actual is not None and actual >= 0:
        out["actual-size"] = actual
    out["virtual-size"] = node.total_bytes
    if dinfo.cluster_size:
        out["cluster-size"] = dinfo.cluster_size
    if dinfo.encrypted:
        out["encrypted"] = True
    if node.backing_file:
        out["backing-filename"] = node.backing_file
        out["full-backing-filename"] = full_backing_filename(node.filename, node.backing_file)
        if node.backing_format:
            out["backing-filename-format"] = node.backing_format
    snaps = await drv.snapshot_list()
    if snaps:
        out["snapshots"] = [snapshot_json(s) for s in snaps]
    specific = drv.get_specific_info()
    if specific:
        out["format-specific"] = specific
    return out


def snapshot_json(s: "SnapshotInfo") -> dict[str, Any]:
    d: dict[str, Any] = {"id": s.id, "name": s.name, "vm-state-size": s.vm_state_size,
                         "date-sec": s.date_sec, "date-nsec": s.date_nsec,
                         "vm-clock-sec": s.vm_clock_nsec // 10**9,
                         "vm-clock-nsec": s.vm_clock_nsec % 10**9}
    if s.icount is not None:
        d["icount"] = s.icount
    return d


SNAPSHOT_HEADER = "%-10s%-17s%8s%20s%13s%11s" % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
                                                  "ICOUNT")


def snapshot_line(s: "SnapshotInfo") -> str:
    from ..common import size_to_str
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.date_sec))
    secs, nsec = divmod(s.vm_clock_nsec, 10**9)
    clock = "%02d:%02d:%02d.%03d" % (secs // 3600, secs // 60 % 60, secs % 60, nsec // 10**6)
    icount = "" if s.icount is None else str(s.icount)
    return "%-9s %-16s %8s%20s%13s%11s" % (s.id, s.name, size_to_str(s.vm_state_size), date,
                                           clock, icount)


def snapshot_table(snaps: list["SnapshotInfo"]) -> list[str]:
    return [SNAPSHOT_HEADER, *(snapshot_line(s) for s in snaps)]


def human(i: dict[str, Any]) -> str:
    from ..common import size_to_str
    from blocklayer.core.driver import SnapshotInfo
    lines = [f"image: {i['filename']}", f"file format: {i['format']}",
             f"virtual size: {size_to_str(i['virtual-size'])} ({i['virtual-size']} bytes)"]
    actual = i.get("actual-size")
    lines.append("disk size: " + (size_to_str(actual) if actual is not None else "unavailable"))
    if i.get("encrypted"):
        lines.append("encrypted: yes")
    if i.get("cluster-size"):
        lines.append(f"cluster_size: {i['cluster-size']}")
    if i.get("dirty-flag"):
        lines.append("dirty flag: yes")
    if "backing-filename" in i:
        line = f"backing file: {i['backing-filename']}"
        full = i.get("full-backing-filename")
        if full and full != i["backing-filename"]:
            line += f" (actual path: {full})"
        lines.append(line)
        if "backing-filename-format" in i:
            lines.append(f"backing file format: {i['backing-filename-format']}")
    if i.get("snapshots"):
        lines.append("Snapshot list:")
        snaps = [SnapshotInfo(s["id"], s["name"], s["vm-state-size"], s["date-sec"],
                              s["date-nsec"], s["vm-clock-sec"] * 10**9 + s["vm-clock-nsec"],
                              s.get("icount")) for s in i["snapshots"]]
        lines += snapshot_table(snaps)
    spec = i.get("format-specific")
    if spec and spec.get("data") is not None:
        lines.append("Format specific information:")
        dump_human(spec["data"], 1, lines)
    return "\n".join(lines) + "\n"
