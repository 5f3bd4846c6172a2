"""blocklayer-img vs qemu-img in the same run (issue 5's benchmarks).

    python3 benchmarks/bench_img.py [--gib 4] [--small-clusters-mib 1024] [--rounds 5]

Each row is our time / qemu-img's time for the same command on the same input, the
two run alternately ``--rounds`` times (medians; the ratio column is the median of the
per-round ratios):
convert raw->qcow2, qcow2->raw, qcow2->qcow2 compressed (zlib, zstd) of a half-allocated
image; map and check of a qcow2 with 512-byte clusters and millions of allocated
clusters; convert of a 1 TiB sparse image with 100 MiB allocated, and (ours only) the
same data in a 1 GiB image, whose ratio to the 1 TiB run should stay near 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

from common import half_allocated, interleaved, ours, table

ROUNDS = 5


def both(rows: list, name: str, args: list[str], clean: list[str] = ()) -> tuple[float, float]:
    mine, theirs, ratio, best = interleaved([*ours("img"), *args], ["qemu-img", *args],
                                            ROUNDS, tuple(clean))
    rows.append((name, mine, theirs, ratio, best))
    return mine, theirs


def main() -> None:
    global ROUNDS
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--small-clusters-mib", type=int, default=1024,
                    help="data written into the 512-byte-cluster image (2048 clusters/MiB)")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args()
    ROUNDS = args.rounds
    rows: list = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        p = lambda name: os.path.join(tmp, name)  # noqa: E731
        half_allocated(p("half.raw"), "raw", args.gib)
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", p("half.raw"), p("half.qcow2")],
                       check=True)
        g = args.gib
        both(rows, f"convert raw->qcow2 ({g} GiB, half)",
             ["convert", "-f", "raw", "-O", "qcow2", p("half.raw"), p("out.qcow2")], [p("out.qcow2")])
        both(rows, f"convert qcow2->raw ({g} GiB, half)",
             ["convert", "-f", "qcow2", "-O", "raw", p("half.qcow2"), p("out.raw")], [p("out.raw")])
        for algo in ("zlib", "zstd"):
            both(rows, f"convert -c {algo} qcow2->qcow2 ({g} GiB)",
                 ["convert", "-c", "-f", "qcow2", "-O", "qcow2", "-o", f"compression_type={algo}",
                  p("half.qcow2"), p("out.qcow2")], [p("out.qcow2")])
        # 512-byte clusters, millions of allocated clusters
        small = p("small.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                        small, f"{2 * args.small_clusters_mib}M"], check=True)
        cmds = []
        for i in range(0, args.small_clusters_mib, 64):
            cmds += ["-c", f"write -P {i % 200 + 1} {2 * i}M 64M"]
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, small], check=True,
                       stdout=subprocess.DEVNULL)
        n = args.small_clusters_mib * 2048
        both(rows, f"map, 512 B clusters ({n / 1e6:.1f} M allocated)",
             ["map", "--output=json", "-f", "qcow2", small])
        both(rows, f"check, 512 B clusters ({n / 1e6:.1f} M allocated)",
             ["check", "-f", "qcow2", small])
        # 1 TiB sparse with 100 MiB allocated, vs the same data in 1 GiB
        for size in ("1T", "1G"):
            img = p(f"sparse{size}.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, size], check=True)
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 50M",
                            "-c", "write -P 9 512M 50M", img], check=True,
                           stdout=subprocess.DEVNULL)
        both(rows, "convert 1 TiB sparse (100 MiB) qcow2->qcow2",
                      ["convert", "-O", "qcow2", p("sparse1T.qcow2"), p("o1.qcow2")], [p("o1.qcow2")])
        big_t, small_t, ratio, best = interleaved(
            [*ours("img"), "convert", "-O", "qcow2", p("sparse1T.qcow2"), p("o1.qcow2")],
            [*ours("img"), "convert", "-O", "qcow2", p("sparse1G.qcow2"), p("o2.qcow2")],
            ROUNDS, (p("o1.qcow2"), p("o2.qcow2")))
        rows.append(("ours: 1 TiB sparse vs 1 GiB, same data", big_t, small_t, ratio, best))
    table(rows)


if __name__ == "__main__":
    main()
