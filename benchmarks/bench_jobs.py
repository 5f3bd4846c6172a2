"""Block jobs in blocklayer-storage-daemon and in qemu-storage-daemon, measured in the
same run, printed as ratios (ours / QSD) of wall time (command to BLOCK_JOB_COMPLETED,
or READY for mirror) and of the daemon's CPU time.  Run by hand:

    python3 benchmarks/bench_jobs.py [--size MiB] [--rounds N] [--jobs backup,mirror,...]

Jobs (the source has data in every other MiB, written in alternating 1 MiB pieces):
- backup: blockdev-backup sync=full of the source to a new qcow2;
- mirror: blockdev-mirror sync=full of the source to a new qcow2, until READY;
- stream: block-stream of an empty overlay over the source (a two-layer chain);
- commit: block-commit of an overlay holding a quarter of the size into the source;
- speed: blockdev-mirror at 50 MiB/s, the rate it keeps over 20 s (bytes copied / time).
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


def add(name: str, backing: bool = True) -> dict[str, object]:
    opts: dict[str, object] = {"driver": "qcow2", "node-name": name,
                               "file": {"driver": "file", "filename": f"{name}.qcow2"}}
    if not backing:
        opts["backing"] = None
    return opts


JOBS = {
    # name: (nodes to add, command, arguments, event that ends the measurement)
    "backup": ([add("src"), add("tgt")], "blockdev-backup",
               {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"},
               "BLOCK_JOB_COMPLETED"),
    "mirror": ([add("src"), add("tgt")], "blockdev-mirror",
               {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"},
               "BLOCK_JOB_READY"),
    "stream": ([add("ovl")], "block-stream", {"job-id": "j", "device": "ovl"},
               "BLOCK_JOB_COMPLETED"),
    "commit": ([add("ovl")], "block-commit", {"job-id": "j", "device": "ovl"},
               "BLOCK_JOB_READY"),
}


async def run_job(sock: Path, job: str) -> float:
    nodes, command, args, until = JOBS[job]
    client = QMPClient("bench")
    listener = EventListener((until, "BLOCK_JOB_COMPLETED"))
    client.register_listener(listener)
    await client.connect(str(sock))
    try:
        for node in nodes:
            await client.execute("blockdev-add", node)
        start = time.monotonic()
        await client.execute(command, args)
        while True:
            event = await asyncio.wait_for(listener.get(), 3600)
            if event["event"] == until or "error" in event.get("data", {}):
                break
        wall = time.monotonic() - start
        assert "error" not in event["data"], event
        if until == "BLOCK_JOB_READY":
            await client.execute("job-cancel", {"id": "j"})
        return wall
    finally:
        await client.disconnect()


async def speed_kept(sock: Path, seconds: float = 20.0) -> float:
    """A mirror at 50 MiB/s: the bytes it copied in ``seconds``, per second."""
    nodes, command, args, _ = JOBS["mirror"]
    client = QMPClient("bench")
    await client.connect(str(sock))
    try:
        for node in nodes:
            await client.execute("blockdev-add", node)
        await client.execute(command, {**args, "speed": 50 << 20})
        start = time.monotonic()
        await asyncio.sleep(seconds)
        jobs = await client.execute("query-block-jobs")
        rate = jobs[0]["offset"] / (time.monotonic() - start)
        await client.execute("job-cancel", {"id": "j"})
        return rate / (1 << 20)
    finally:
        await client.disconnect()


def prepare(job: str, work: Path, source: Path) -> None:
    for f in ("src.qcow2", "tgt.qcow2", "ovl.qcow2"):
        (work / f).unlink(missing_ok=True)
    size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(source)],
                                     capture_output=True, text=True, check=True).stdout
                      )["virtual-size"]
    subprocess.run(["cp", "--sparse=always", str(source), str(work / "src.qcow2")], check=True)
    if job in ("backup", "mirror", "speed"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "tgt.qcow2"),
                        str(size)], check=True)
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "src.qcow2", "-F",
                        "qcow2", str(work / "ovl.qcow2")], check=True)
    if job == "commit":           # a quarter of the size in the overlay, every other MiB
        mib = size >> 20
        cmds: list[str] = []
        for m in range(1, mib // 2, 2):
            cmds += ["-c", f"write -P 0x5a {m}M 1M"]
        for i in range(0, len(cmds), 2000):
            subprocess.run(["qemu-io", "-f", "qcow2", *cmds[i:i + 2000],
                            str(work / "ovl.qcow2")], check=True, stdout=subprocess.DEVNULL)


def one(kind: str, job: str, work: Path, source: Path) -> tuple[float, float]:
    prepare(job, work, source)
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
        value = asyncio.run(speed_kept(sock) if job == "speed" else run_job(sock, job))
        return value, cpu_seconds(proc.pid) - cpu0
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096, help="source size in MiB")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--jobs", default="backup,mirror,stream,commit,speed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        source = work / "source.qcow2"
        make_source(source, a.size)
        print(f"{a.size} MiB source, half allocated; best of {a.rounds}")
        print(f"{'job':8} {'QSD s':>8} {'ours s':>8} {'ratio':>6} {'QSD cpu':>8} "
              f"{'ours cpu':>8} {'ratio':>6}")
        for job in a.jobs.split(","):
            res: dict[str, list[tuple[float, float]]] = {"qsd": [], "ours": []}
            for _ in range(a.rounds):        # alternating, so both see the same cache
                for kind in ("qsd", "ours"):
                    res[kind].append(one(kind, job, work, source))
            if job == "speed":               # MiB/s kept (the target is 50)
                q, o = max(res["qsd"]), max(res["ours"])
                print(f"{job:8} {q[0]:7.1f}M {o[0]:7.1f}M {o[0] / q[0]:6.2f} "
                      f"{q[1]:8.2f} {o[1]:8.2f} {o[1] / max(q[1], 0.01):6.2f}")
                continue
            q, o = min(res["qsd"]), min(res["ours"])
            print(f"{job:8} {q[0]:8.2f} {o[0]:8.2f} {o[0] / q[0]:6.2f} "
                  f"{q[1]:8.2f} {o[1]:8.2f} {o[1] / max(q[1], 0.01):6.2f}")


if __name__ == "__main__":
    main()
