"""TLS for the simulator: a throw-away CA (trustme) made at start-up, its PEM written for clients.

Clients verify the simulator's certificate by host name (api.upstox.com, api.upstox.invalid, localhost,
127.0.0.1, ...) while connecting to a loopback address, like the feed's DNS-fallback path does.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

DEFAULT_NAMES = ("api.upstox.com", "api-hft.upstox.com", "api.upstox.invalid", "localhost", "127.0.0.1")


@dataclass(frozen=True)
class SimTLS:
    """The CA PEM path clients trust, and the server's certificate/key files."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only the simulator's CA (for tests and tools)."""
        return ssl.create_default_context(cafile=str(self.ca_path))


def make_tls(ca_path: str, extra_names: list[str]) -> SimTLS:
    """Make a CA and a server certificate for the default names plus `extra_names`.

    The CA PEM goes to `ca_path` (a fresh temporary directory when empty); the server's certificate
    and key go to a private temporary directory.
    """
    ca = trustme.CA()
    names = list(dict.fromkeys([*DEFAULT_NAMES, *extra_names]))
    cert = ca.issue_cert(*names)
    workdir = Path(tempfile.mkdtemp(prefix="sim-tls-"))
    target = Path(ca_path) if ca_path else workdir / "sim-ca.pem"
    target.parent.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(target))
    cert_path = workdir / "server.pem"
    key_path = workdir / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return SimTLS(ca_path=target, cert_path=cert_path, key_path=key_path)
