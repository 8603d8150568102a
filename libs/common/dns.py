"""Host name resolution that survives a broken system resolver.

Order: the system resolver, then each fallback DNS server of `DNS_FALLBACK_SERVERS` (Google DNS, then
Cloudflare DNS by default) queried directly with dnspython, then the last good address of the host if it
is younger than `DNS_REMEMBER_S`. Callers connect to the returned address and keep the host name for TLS
SNI, certificate checks and the Host header.

A healthy system resolver logs nothing (the guide's weekly review expects zero `[DNS]` lines); a failure
logs the guide's lines: ``[DNS] ⚠️ System DNS failed: Name or service not known``, ``[DNS] Trying 8.8.8.8...``,
``[DNS] ✅ Resolved api.upstox.com → 49.44.1.2 (via Google DNS)``. A health check (`check`) logs even a
healthy result.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from libs.common.clock import Clock
from libs.common.logging import tagged
from libs.common.settings import Settings

SYSTEM = "system DNS"
REMEMBERED = "remembered"
LITERAL = "literal"
_KNOWN_SERVERS = {
    "8.8.8.8": "Google DNS",
    "8.8.4.4": "Google DNS",
    "1.1.1.1": "Cloudflare DNS",
    "1.0.0.1": "Cloudflare DNS",
}

log = tagged("DNS")

SystemResolve = Callable[[str], Awaitable[str]]


def resolver_name(server: str) -> str:
    """Display name of a fallback DNS server: "Google DNS", "Cloudflare DNS", else the address itself."""
    return _KNOWN_SERVERS.get(server, server)


def is_ip_literal(host: str) -> bool:
    """True when `host` is already an IPv4/IPv6 address (nothing to resolve)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where to connect for `host`: `address`, found by `resolver` ("system DNS", "Google DNS", ...)."""

    host: str
    address: str
    resolver: str

    @property
    def via_fallback(self) -> bool:
        """True when the system resolver did not give this address."""
        return self.resolver not in (SYSTEM, LITERAL)


class DnsFailure(OSError):
    """No resolver (nor the remembered address) could give an address for the host."""

    def __init__(self, host: str, reasons: Sequence[str]) -> None:
        super().__init__(f"cannot resolve {host}: " + "; ".join(reasons))
        self.host = host
        self.reasons = list(reasons)


async def system_resolve(host: str) -> str:
    """The first address the system resolver (getaddrinfo) gives for `host`, IPv4 preferred."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, "no address")
    ipv4 = [info for info in infos if info[0] == socket.AF_INET]
    return str((ipv4 or infos)[0][4][0])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError | dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such domain (NXDOMAIN)"
    return str(exc) or type(exc).__name__


class HostResolver:
    """Resolves host names through the fallback chain and remembers the last good address per host."""

    def __init__(
        self,
        *,
        fallback_servers: Sequence[str],
        port: int,
        timeout_s: float,
        remember_s: float,
        clock: Clock,
        system: SystemResolve = system_resolve,
    ) -> None:
        self._servers = list(fallback_servers)
        self._port = port
        self._timeout_s = timeout_s
        self._remember_s = remember_s
        self._clock = clock
        self._system = system
        self._last_good: dict[str, tuple[Resolution, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> HostResolver:
        """A resolver configured by `DNS_FALLBACK_SERVERS`, `DNS_PORT`, `DNS_TIMEOUT_S`, `DNS_REMEMBER_S`."""
        return cls(
            fallback_servers=settings.dns_fallback_servers,
            port=settings.dns_port,
            timeout_s=settings.dns_timeout_s,
            remember_s=settings.dns_remember_s,
            clock=clock,
        )

    async def check(self, host: str) -> Resolution:
        """The guide's DNS health check: like `resolve`, but logs the result even when the system DNS is fine."""
        if is_ip_literal(host):
            return await self.resolve(host)  # an address needs no DNS: nothing to check
        log.info("Checking DNS health...")
        return await self.resolve(host, verbose=True)

    async def resolve(self, host: str, *, verbose: bool = False) -> Resolution:
        """Where to connect for `host`. Raises `DnsFailure` when every resolver failed and nothing is remembered.

        An IP literal is returned as is, without any lookup.
        """
        if is_ip_literal(host):
            return Resolution(host, host.strip("[]"), LITERAL)
        reasons: list[str] = []
        try:
            address = await asyncio.wait_for(self._system(host), self._timeout_s)
        except (OSError, TimeoutError, UnicodeError) as exc:
            reason = _reason(exc)
            reasons.append(f"system: {reason}")
            log.warning(f"⚠️ System DNS failed: {reason}")
        else:
            if verbose:
                log.info(f"✅ Resolved {host} → {address} (via {SYSTEM})")
            return self._remember(Resolution(host, address, SYSTEM))

        for server in self._servers:
            name = resolver_name(server)
            log.info(f"Trying {server}...")
            try:
                address = await self._query(server, host)
            except (dns.exception.DNSException, OSError, TimeoutError) as exc:
                reason = _reason(exc)
                reasons.append(f"{name}: {reason}")
                log.warning(f"⚠️ {name} failed: {reason}")
                continue
            log.info(f"✅ Resolved {host} → {address} (via {name})")
            return self._remember(Resolution(host, address, name))

        remembered = self._last_good.get(host)
        if remembered is not None:
            previous, at = remembered
            age_s = self._clock.monotonic() - at
            if age_s <= self._remember_s:
                log.warning(
                    f"⚠️ Every resolver failed; using the remembered address {host} → {previous.address} "
                    f"({age_s:.0f}s old, via {previous.resolver})"
                )
                return Resolution(host, previous.address, REMEMBERED)
        log.error(f"❌ Cannot resolve {host}: every resolver failed")
        raise DnsFailure(host, reasons)

    def _remember(self, resolution: Resolution) -> Resolution:
        self._last_good[resolution.host] = (resolution, self._clock.monotonic())
        return resolution

    async def _query(self, server: str, host: str) -> str:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [server]
        resolver.port = self._port
        resolver.lifetime = self._timeout_s
        resolver.timeout = self._timeout_s
        answer = await resolver.resolve(host, "A", search=False)
        for record in answer:
            return str(record.address)
        raise dns.resolver.NoAnswer
