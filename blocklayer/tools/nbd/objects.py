"""``--object``: the user-creatable objects qemu-nbd takes (secret, tls-creds-x509,
authz-simple), checked as QEMU checks them, and TLS contexts made from the creds."""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

from ...core.errors import InvalidArgument
from ...core.options import split_keyval

TYPES = ("secret", "tls-creds-x509", "tls-creds-psk", "authz-simple")


@dataclass
class Objects:
    """The objects of one command line, by id."""

    by_id: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, spec: str) -> None:
        props = split_keyval(spec, implied_key="qom-type")
        qom_type = props.pop("qom-type", None)
        if qom_type is None:
            raise InvalidArgument("Parameter 'qom-type' is missing")
        if qom_type not in TYPES:
            raise InvalidArgument(f"Parameter 'qom-type' does not accept value '{qom_type}'")
        oid = props.get("id")
        if oid is None:
            raise InvalidArgument("Parameter 'id' is missing")
        if qom_type == "secret" and "data" not in props and "file" not in props:
            raise InvalidArgument("Either 'file' or 'data' must be provided")
        if oid in self.by_id:
            raise InvalidArgument(f"attempt to add duplicate property '{oid}' to object "
                                  "(type 'container')")
        self.by_id[oid] = {"qom-type": qom_type, **props}

    def tls_context(self, creds_id: str, server: bool) -> ssl.SSLContext:
        """An SSL context from a tls-creds-x509 object (QEMU's file names in ``dir``)."""
        obj = self.by_id.get(creds_id)
        if obj is None or not obj["qom-type"].startswith("tls-creds"):
            raise InvalidArgument(f"No TLS credentials with id '{creds_id}'")
        endpoint = obj.get("endpoint", "server")
        if (endpoint == "server") != server:
            raise InvalidArgument("Expecting TLS credentials with a "
                                  f"{'server' if server else 'client'} endpoint")
        if obj["qom-type"] != "tls-creds-x509":
            raise InvalidArgument("TLS-PSK credentials are not supported")
        directory = obj.get("dir", "")
        prefix = "server" if server else "client"
        purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
        ctx = ssl.create_default_context(purpose)
        ca = os.path.join(directory, "ca-cert.pem")
        cert = os.path.join(directory, f"{prefix}-cert.pem")
        key = os.path.join(directory, f"{prefix}-key.pem")
        try:
            ctx.load_verify_locations(ca)
            if server or os.path.exists(cert):
                ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"Unable to load TLS credentials: {exc}") from None
        verify = obj.get("verify-peer", "on")     # QEMU verifies peers by default
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED if verify in ("on", "yes", "true") else \
            ssl.CERT_NONE
        return ctx

    def authz_identity(self, authz_id: str) -> str:
        obj = self.by_id.get(authz_id)
        if obj is None or obj["qom-type"] != "authz-simple":
            raise InvalidArgument(f"No authorization object with id '{authz_id}'")
        return obj.get("identity", "")
