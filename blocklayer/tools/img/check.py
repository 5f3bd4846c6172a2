"""``check``: consistency check and repair, with qemu-img's exit codes
(0 clean, 1 check failed, 2 corrupt, 3 leaks, 63 not supported)."""
from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

from blocklayer.core.errors import BlockError, NotSupported

from .args import UsageError, output_format, parse
from .common import CommandError, close_all, new_graph, open_img, to_qjson

if TYPE_CHECKING:
    from blocklayer.core.driver import CheckResult


def main(argv: list[str]) -> int:
    p = parse(argv, "f:hqr:T:U", ["format=", "output=", "repair=", "object=", "image-opts",
                                  "force-share"])
    from blocklayer.core.driver import CheckMode
    mode = CheckMode.NONE
    repair = p.last("-r", "--repair")
    if repair is not None:
        if repair == "leaks":
            mode = CheckMode.FIX_LEAKS
        elif repair == "all":
            mode = CheckMode.FIX_ALL
        else:
            raise UsageError("Unknown option value for -r (expecting 'leaks' or 'all'): "
                             + repair)
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    out = output_format(p.last("--output"))
    return asyncio.run(run(p.args[0], p.last("-f", "--format"), out, mode, p.has("-q"),
                           p.last("-T"), p.has("--image-opts"), p.has("-U", "--force-share")))


def result_json(r: "CheckResult", filename: str, fmt: str) -> dict[str, Any]:
    d: dict[str, Any] = {"filename": filename, "format": fmt, "check-errors": r.check_errors}
    for key, value in (("image-end-offset", r.image_end_offset), ("corruptions", r.corruptions),
                       ("leaks", r.leaks), ("corruptions-fixed", r.corruptions_fixed),
                       ("leaks-fixed", r.leaks_fixed), ("total-clusters", r.total_clusters),
                       ("allocated-clusters", r.allocated_clusters),
                       ("fragmented-clusters", r.fragmented_clusters),
                       ("compressed-clusters", r.compressed_clusters)):
        if value:
            d[key] = value
    return d


def human(r: "CheckResult") -> str:
    lines: list[str] = []
    if not (r.corruptions or r.leaks or r.check_errors):
        lines.append("No errors were found on the image.")
    else:
        if r.corruptions:
            lines += ["", f"{r.corruptions} errors were found on the image.",
                      "Data may be corrupted, or further writes to the image may corrupt it."]
        if r.leaks:
            lines += ["", f"{r.leaks} leaked clusters were found on the image.",
                      "This means waste of disk space, but no harm to data."]
        if r.check_errors:
            lines += ["", f"{r.check_errors} internal errors have occurred during the check."]
    if r.total_clusters and r.allocated_clusters:
        lines.append("%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters"
                     % (r.allocated_clusters, r.total_clusters,
                        r.allocated_clusters * 100.0 / r.total_clusters,
                        r.fragmented_clusters * 100.0 / r.allocated_clusters,
                        r.compressed_clusters * 100.0 / r.allocated_clusters))
    if r.image_end_offset > 0:
        lines.append(f"Image end offset: {r.image_end_offset}")
    return "\n".join(lines) + "\n"


async def _check(node: Any, mode: Any) -> "CheckResult":
    try:
        result = await node.driver.check(mode)
    except NotSupported:
        raise CommandError("This image format does not support checks", 63) from None
    except BlockError as exc:
        for msg in exc.check_messages:
            sys.stderr.write(msg.rstrip("\n") + "\n")
        raise CommandError(f"Check failed: {exc.strerror}", 1) from None
    for msg in result.messages:
        sys.stderr.write(msg.rstrip("\n") + "\n")
    return result


async def run(filename: str, fmt: str | None, out: str, mode: Any, quiet: bool,
              cache: str | None, image_opts: bool, force_share: bool) -> int:
    from blocklayer.core.driver import CheckMode
    node = await open_img(new_graph(), filename, fmt=fmt, image_opts=image_opts,
                          read_only=mode == CheckMode.NONE, force_share=force_share,
                          cache=cache, src_cache=True, check=True)
    try:
        result = await _check(node, mode)
        if result.corruptions_fixed or result.leaks_fixed:
            fixed = (result.corruptions_fixed, result.leaks_fixed)
            if out == "human" and not quiet:
                sys.stdout.write("The following inconsistencies were found and repaired:\n\n"
                                 f"    {fixed[1]} leaked clusters\n"
                                 f"    {fixed[0]} corruptions\n\n"
                                 "Double checking the fixed image now...\n")
            result = await _check(node, CheckMode.NONE)
            result.corruptions_fixed, result.leaks_fixed = fixed
        if not quiet:
            if out == "json":
                print(to_qjson(result_json(result, filename, node.format_name)))
            else:
                sys.stdout.write(human(result))
    finally:
        await close_all(node)
    if result.check_errors:
        return 1
    if result.corruptions:
        return 2
    if result.leaks:
        return 3
    return 0
