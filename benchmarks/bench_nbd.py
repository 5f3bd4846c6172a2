"""blocklayer-nbd against qemu-nbd, measured in the same run with fio's nbd engine over
a unix socket, printed as ratios (ours / qemu-nbd).  Run by hand:

    python3 benchmarks/bench_nbd.py [--runtime SECONDS] [--size MiB]

Jobs: 4 KiB random read at QD1 and QD32, 4 KiB random write at QD32, 1 MiB sequential
read and write at QD4, each on raw and on qcow2 (images filled first so reads hit data).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = [("randread 4k QD1", "randread", "4k", 1), ("randread 4k QD32", "randread", "4k", 32),
        ("randwrite 4k QD32", "randwrite", "4k", 32), ("read 1M QD4", "read", "1M", 4),
        ("write 1M QD4", "write", "1M", 4)]


def start(kind: str, image: Path, fmt: str, sock: Path) -> subprocess.Popen[bytes]:
    cmd = ["qemu-nbd"] if kind == "qemu" else [sys.executable, "-m", "blocklayer.tools.nbd"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*cmd, "-t", "-e", "0", "-f", fmt,
                             "-k", str(sock), str(image)], env=env,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        if sock.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} did not start")


def fio(uri: str, rw: str, bs: str, depth: int, size: int, runtime: int) -> float:
    """IOPS of one job."""
    out = subprocess.run(
        ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
         f"--iodepth={depth}", f"--size={size}M", f"--runtime={runtime}", "--time_based",
         "--output-format=json"], capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return float(side["iops"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        results: dict[tuple[str, str], dict[str, float]] = {}
        for fmt in ("raw", "qcow2"):
            image = Path(tmp) / f"bench.{fmt}"
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(image),
                            f"{a.size}M"], check=True)
            subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0x5a 0 {a.size}M",
                            str(image)], check=True, stdout=subprocess.DEVNULL)
            for kind in ("qemu", "ours"):
                sock = Path(tmp) / f"{kind}.sock"
                proc = start(kind, image, fmt, sock)
                try:
                    uri = f"nbd+unix:///?socket={sock}"
                    for name, rw, bs, depth in JOBS:
                        results.setdefault((fmt, name), {})[kind] = \
                            fio(uri, rw, bs, depth, a.size, a.runtime)
                finally:
                    os.kill(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                    sock.unlink(missing_ok=True)
    print(f"{'format':6} {'job':18} {'qemu-nbd IOPS':>14} {'ours IOPS':>10} {'ratio':>6}")
    for (fmt, name), r in results.items():
        print(f"{fmt:6} {name:18} {r['qemu']:14.0f} {r['ours']:10.0f} "
              f"{r['ours'] / r['qemu']:6.2f}")


if __name__ == "__main__":
    main()
