"""--tls-creds (X.509) and --tls-authz with QEMU's TLS client, libnbd and our -L."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need, qemu_img

from .servers import server

TEMPLATES = {
    "ca": "cn = Test CA\nca\ncert_signing_key\n",
    "server": "organization = Test\ncn = localhost\ndns_name = localhost\n"
              "tls_www_server\nencryption_key\nsigning_key\n",
    "client": "country = GB\norganization = Test\ncn = client\ntls_www_client\n"
              "encryption_key\nsigning_key\n",
}
CLIENT_DN = "C=GB,,O=Test,,CN=client"          # ',' doubled inside an --object value


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    certtool = need("certtool")
    d = tmp_path / "pki"
    d.mkdir()

    def tool(*args: str) -> None:
        subprocess.run([certtool, *args], check=True, capture_output=True, timeout=60)

    for name, text in TEMPLATES.items():
        (d / f"{name}.info").write_text(text)
        tool("--generate-privkey", "--outfile", str(d / f"{name}-key.pem"))
    tool("--generate-self-signed", "--load-privkey", str(d / "ca-key.pem"), "--template",
         str(d / "ca.info"), "--outfile", str(d / "ca-cert.pem"))
    for name in ("server", "client"):
        tool("--generate-certificate", "--load-ca-certificate", str(d / "ca-cert.pem"),
             "--load-ca-privkey", str(d / "ca-key.pem"), "--load-privkey",
             str(d / f"{name}-key.pem"), "--template", str(d / f"{name}.info"),
             "--outfile", str(d / f"{name}-cert.pem"))
    return d


def _qemu_io(sock: Path, pki: Path, *cmds: str) -> subprocess.CompletedProcess[str]:
    opts = (f"driver=nbd,server.type=unix,server.path={sock},tls-creds=tls0,"
            "tls-hostname=localhost")
    args = [need("qemu-io"), "--object",
            f"tls-creds-x509,id=tls0,dir={pki},endpoint=client", "--image-opts", opts]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("identity,allowed", [(CLIENT_DN, True), ("CN=someone", False)])
def test_tls_and_authz(tmp_path: Path, certs: Path, identity: str, allowed: bool) -> None:
    image = tmp_path / "d.raw"
    qemu_img("create", "-f", "raw", str(image), "1M")
    sock = tmp_path / "tls.sock"
    args = ["--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=server",
            "--object", f"authz-simple,id=a0,identity={identity}", "--tls-creds", "tls0",
            "--tls-authz", "a0", "-f", "raw"]
    with server("ours", image, *args, sock=sock):
        res = _qemu_io(sock, certs, "write -P 7 0 64k", "read -P 7 0 64k")
        plain = subprocess.run([need("nbdinfo"), "--size", f"nbd+unix:///?socket={sock}"],
                               capture_output=True, text=True, timeout=60)
        listed = subprocess.run(
            [sys.executable, "-m", "blocklayer.tools.nbd", "-L", "-k", str(sock),
             "--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client",
             "--tls-creds", "tls0"], capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0                   # TLS is required
    if allowed:
        assert res.returncode == 0, res.stderr
        assert "read 65536/65536" in res.stdout
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("exports available: 1\n")
    else:
        assert res.returncode != 0
        assert "read 65536" not in res.stdout
