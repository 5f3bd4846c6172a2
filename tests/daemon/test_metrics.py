"""--metrics: the daemon's Prometheus endpoint scraped while NBD clients do I/O through
an export; the counters checked against what the clients did and against
query-blockstats (wr_highest_offset, the counter QSD reports for nodes)."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from qemu.qmp import QMPClient

from tests.conftest import qemu_img
from tests.daemon.test_exports import nbd_module
from tests.nbd.servers import free_port
from tests.qmp.qsd import daemon

CHUNK = 64 * 1024
WRITES = 64


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def node(metrics: dict[Any, float], name: str, node_name: str) -> float:
    return metrics[(f"blocklayer_node_{name}_total" if not name.startswith("wr_") else
                    f"blocklayer_node_{name}", (("node", node_name),))]


def wait_port(port: int) -> None:
    """Until the endpoint accepts (options after --monitor are applied after it listens)."""
    for _ in range(400):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.025)
    raise AssertionError(f"port {port} never listened")


async def blockstats(sock: Path) -> dict[str, Any]:
    client = QMPClient("metrics")
    await client.connect(str(sock))
    try:
        reply = await client.execute("query-blockstats", {"query-nodes": True})
    finally:
        await client.disconnect()
    assert isinstance(reply, list)
    return {s["node-name"]: s["stats"] for s in reply}


def test_metrics_follow_nbd_io(tmp_path: Path) -> None:
    nbd = nbd_module()
    qemu_img("create", "-q", "-f", "raw", str(tmp_path / "c.raw"), "16M")
    port = free_port()
    with daemon("ours", tmp_path, "--metrics", f"127.0.0.1:{port}",
                "--object", "throttle-group,id=tg,limits.iops-total=1000",
                "--blockdev", "driver=file,node-name=cf,filename=c.raw",
                "--blockdev", "driver=raw,node-name=c,file=cf",
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/nbd.sock",
                "--export", "type=nbd,id=ex,node-name=c,writable=on") as sock:
        wait_port(port)
        asyncio.run(blockstats(sock))            # every option is applied by now
        before = scrape(port)
        assert node(before, "write_bytes", "c") == 0
        assert before[("blocklayer_throttle_group_limit",
                       (("group", "tg"), ("limit", "limits.iops-total")))] == 1000
        assert before[("blocklayer_export_connections", (("export", "ex"), ("node", "c")))] == 0
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///c?socket={tmp_path}/nbd.sock")
        done = threading.Event()

        def io() -> None:
            for i in range(WRITES):
                h.pwrite(bytes([i]) * CHUNK, i * CHUNK)
                h.pread(CHUNK, i * CHUNK)
            h.flush()
            done.set()
        worker = threading.Thread(target=io)
        worker.start()
        scrapes = []
        while not done.is_set():                   # scraped while the I/O runs
            scrapes.append(scrape(port))
        worker.join()
        during = scrapes[0] if scrapes else before
        assert during[("blocklayer_export_connections",
                       (("export", "ex"), ("node", "c")))] == 1
        values = [node(s, "write_bytes", "c") for s in scrapes]
        assert values == sorted(values)            # counters only go up
        after = scrape(port)
        assert node(after, "write_bytes", "c") == WRITES * CHUNK
        assert node(after, "write_operations", "c") == WRITES
        assert node(after, "read_bytes", "c") >= WRITES * CHUNK
        assert node(after, "flush_operations", "c") >= 1
        assert node(after, "write_bytes", "cf") == WRITES * CHUNK
        stats = asyncio.run(blockstats(sock))
        for name in ("c", "cf"):
            assert node(after, "wr_highest_offset", name) == \
                stats[name]["wr_highest_offset"] == WRITES * CHUNK
        h.shutdown()
        assert scrape(port)[("blocklayer_export_connections",
                             (("export", "ex"), ("node", "c")))] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200


def test_metrics_off_by_default_and_bad_address(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "blocklayer.tools.daemon", "--metrics",
                          "nonsense"], check=False, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 1
    assert out.stderr == "blocklayer-storage-daemon: --metrics nonsense: expects host:port\n"
