"""blockdev-backup (sync=full) of a half-allocated qcow2 to a new qcow2, in
blocklayer-storage-daemon and in qemu-storage-daemon, measured in the same run, printed
as ratios (ours / QSD) of wall time (command to BLOCK_JOB_COMPLETED) and of the
daemon's CPU time.  Run by hand:

    python3 benchmarks/bench_backup.py [--size MiB] [--rounds N]

The source has data in every other MiB (fragmented: written in alternating 1 MiB
pieces), the rest unallocated.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import EventListener, QMPClient

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_source(path: Path, size_mib: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"],
                   check=True)
    cmds: list[str] = []
    for mib in range(0, size_mib, 2):
        cmds += ["-c", f"write -P {mib % 250 + 1} {mib}M 1M"]
    for i in range(0, len(cmds), 2000):
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds[i:i + 2000], str(path)], check=True,
                       stdout=subprocess.DEVNULL)


async def backup(sock: Path) -> float:
    client = QMPClient("bench")
    listener = EventListener(("BLOCK_JOB_COMPLETED",))
    client.register_listener(listener)
    await client.connect(str(sock))
    try:
        for name in ("src", "tgt"):
            await client.execute("blockdev-add", {
                "driver": "qcow2", "node-name": name,
                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
        start = time.monotonic()
        await client.execute("blockdev-backup", {"job-id": "b", "device": "src",
                                                 "target": "tgt", "sync": "full"})
        event = await asyncio.wait_for(listener.get(), 3600)
        wall = time.monotonic() - start
        assert "error" not in event["data"], event
        return wall
    finally:
        await client.disconnect()


def one(kind: str, work: Path, source: Path) -> tuple[float, float]:
    for f in ("src.qcow2", "tgt.qcow2"):
        (work / f).unlink(missing_ok=True)
    os.link(source, work / "src.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(source)],
                                     capture_output=True, text=True, check=True).stdout)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "tgt.qcow2"),
                    str(info["virtual-size"])], check=True)
    sock = work / f"{kind}.sock"
    sock.unlink(missing_ok=True)
    args = ["--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor",
            "chardev=m0"]
    cmd = ["qemu-storage-daemon", *args] if kind == "qsd" else \
        [sys.executable, "-m", "blocklayer.tools.daemon", *args]
    proc = subprocess.Popen(cmd, cwd=work, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            if sock.exists():
                break
            time.sleep(0.05)
        cpu0 = cpu_seconds(proc.pid)
        wall = asyncio.run(backup(sock))
        return wall, cpu_seconds(proc.pid) - cpu0
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096, help="source size in MiB")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        source = work / "source.qcow2"
        make_source(source, a.size)
        res: dict[str, list[tuple[float, float]]] = {"qsd": [], "ours": []}
        for _ in range(a.rounds):            # alternating, so both see the same cache
            for kind in ("qsd", "ours"):
                res[kind].append(one(kind, work, source))
        best = {k: min(v) for k, v in res.items()}
        print(f"backup sync=full, {a.size} MiB half allocated, best of {a.rounds}")
        print(f"{'':8} {'wall s':>8} {'cpu s':>8}")
        for k in ("qsd", "ours"):
            print(f"{k:8} {best[k][0]:8.2f} {best[k][1]:8.2f}")
        print(f"{'ratio':8} {best['ours'][0] / best['qsd'][0]:8.2f} "
              f"{best['ours'][1] / max(best['qsd'][1], 0.01):8.2f}")


if __name__ == "__main__":
    main()
