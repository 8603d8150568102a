from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from libs.common.clock import ManualClock, SystemClock
from libs.common.dns import DnsFailure, HostResolver, resolver_name
from services.sim.dns_responder import DnsResponder
from tests.feed.conftest import Logs

HOST = "api.upstox.invalid"  # `.invalid` never resolves through the system resolver


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsResponder]:
    responder = DnsResponder([HOST], "127.0.0.1")
    await responder.start("127.0.0.1", 0)
    yield responder
    responder.stop()


def dns_lines(logs: Logs) -> list[str]:
    return [line for line in logs.lines if line.startswith("[DNS]")]


def test_resolver_display_names() -> None:
    assert resolver_name("8.8.8.8") == "Google DNS"
    assert resolver_name("1.1.1.1") == "Cloudflare DNS"
    assert resolver_name("127.0.0.1") == "127.0.0.1"


async def test_a_healthy_system_resolver_logs_nothing(logs: Logs) -> None:
    resolver = HostResolver(fallback_servers=["8.8.8.8"], port=53, timeout_s=2, remember_s=60, clock=SystemClock())
    resolution = await resolver.resolve("localhost")
    assert (resolution.address, resolution.resolver, resolution.via_fallback) == ("127.0.0.1", "system DNS", False)
    assert dns_lines(logs) == []
    await resolver.check("localhost")
    assert dns_lines(logs) == [
        "[DNS] Checking DNS health...",
        "[DNS] ✅ Resolved localhost → 127.0.0.1 (via system DNS)",
    ]


async def test_an_address_is_not_resolved(logs: Logs) -> None:
    resolver = HostResolver(fallback_servers=[], port=53, timeout_s=1, remember_s=60, clock=SystemClock())
    assert (await resolver.check("127.0.0.1")).address == "127.0.0.1"
    assert dns_lines(logs) == []


@pytest.mark.integration
async def test_system_failure_falls_back_to_the_next_dns_server(logs: Logs, dns_server: DnsResponder) -> None:
    resolver = HostResolver(
        fallback_servers=["127.0.0.2", "127.0.0.1"],  # nothing answers on 127.0.0.2
        port=dns_server.port,
        timeout_s=0.5,
        remember_s=60,
        clock=SystemClock(),
    )
    resolution = await resolver.resolve(HOST)
    assert (resolution.address, resolution.resolver, resolution.via_fallback) == ("127.0.0.1", "127.0.0.1", True)
    lines = dns_lines(logs)
    assert lines[0].startswith("[DNS] ⚠️ System DNS failed: ")
    assert lines[1] == "[DNS] Trying 127.0.0.2..."
    assert lines[2].startswith("[DNS] ⚠️ 127.0.0.2 failed: ")
    assert lines[3:] == ["[DNS] Trying 127.0.0.1...", f"[DNS] ✅ Resolved {HOST} → 127.0.0.1 (via 127.0.0.1)"]
    assert dns_server.queries >= 1


async def test_the_last_good_address_is_remembered_for_a_while(logs: Logs) -> None:
    clock = ManualClock()
    system_up = True

    async def system(host: str) -> str:
        if not system_up:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return "10.1.2.3"

    resolver = HostResolver(fallback_servers=[], port=53, timeout_s=1, remember_s=30, clock=clock, system=system)
    assert (await resolver.resolve("api.upstox.com")).address == "10.1.2.3"
    system_up = False
    clock.advance(20)
    remembered = await resolver.resolve("api.upstox.com")
    assert (remembered.address, remembered.resolver) == ("10.1.2.3", "remembered")
    assert "[DNS] ⚠️ System DNS failed: Temporary failure in name resolution" in logs.lines
    clock.advance(20)
    with pytest.raises(DnsFailure):
        await resolver.resolve("api.upstox.com")
    assert "[DNS] ❌ Cannot resolve api.upstox.com: every resolver failed" in logs.lines
