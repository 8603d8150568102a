"""DNS fallback end to end: the system resolver cannot resolve the Upstox host, a DNS server on loopback can,
and the feed connects over TLS with the certificate checked against the host name."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.models import FeedStatus
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.feed.conftest import Logs, fast, running_feed
from tests.helpers import eventually, free_port

pytestmark = pytest.mark.integration

HOST = "api.upstox.invalid"


@pytest.fixture
async def tls_sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(fast(settings, sim_tls=True, sim_dns_port=free_port())) as running:
        assert running.ca_path is not None and running.dns_port
        yield running


def feed_settings(settings: Settings, sim: Simulator, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "upstox_api_base": f"https://{HOST}:{sim.rest_port}",
        "tls_ca_file": str(sim.ca_path),
        "dns_fallback_servers": ["127.0.0.1"],
        "dns_port": sim.dns_port,
        "dns_timeout_s": 0.5,
        **overrides,
    }
    return fast(settings, **values)


async def status(redis: Redis) -> FeedStatus:
    return FeedStatus.from_redis(await redis.hgetall(keys.FEED_STATUS))


async def is_live(redis: Redis) -> bool:
    return (await status(redis)).connected


async def test_fallback_dns_then_verified_tls_then_prices(
    tls_sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings(settings, tls_sim), redis):
        await eventually(lambda: is_live(redis), timeout_s=5)
        tls_sim.market.set_price("BOSCHLTD", 57500)
        await eventually(lambda: _ltp(redis, "BOSCHLTD", "575.00"))
        current = await status(redis)
        assert (current.dns_resolver, current.resolved_address) == ("127.0.0.1", "127.0.0.1")

        mark = len(logs.lines)
        await tls_sim.inject("drop", 1.3)  # attempts 1..3+ fail: the third runs the DNS health check
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=8)

    dns = [line for line in logs.lines if line.startswith("[DNS]")]
    assert dns[0].startswith("[DNS] ⚠️ System DNS failed: ")
    assert dns[1:3] == ["[DNS] Trying 127.0.0.1...", f"[DNS] ✅ Resolved {HOST} → 127.0.0.1 (via 127.0.0.1)"]
    assert "[SUCCESS] WebSocket connection established!" in logs.lines
    after = logs.feed_after(mark)
    assert "[VERBOSE] Attempting reconnection with fallback DNS..." in after
    check = after.index("[DNS] Checking DNS health...")
    assert after[check - 1].startswith("[VERBOSE] Waiting ")
    assert after[check + 1].startswith("[DNS] ⚠️ System DNS failed: ")
    assert after[check + 2 : check + 4] == [
        "[DNS] Trying 127.0.0.1...",
        f"[DNS] ✅ Resolved {HOST} → 127.0.0.1 (via 127.0.0.1)",
    ]
    assert after[: after.index("[DNS] Checking DNS health...")].count("[VERBOSE] Reconnecting (attempt 3/10)...") == 1


async def _ltp(redis: Redis, symbol: str, ltp: str) -> bool:
    return await redis.hget(keys.price(symbol), "ltp") == ltp


async def test_an_untrusted_certificate_is_refused(
    tls_sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings(settings, tls_sim, tls_ca_file=""), redis):
        await eventually(lambda: "[ERROR] Network error during authorization: ConnectError" in logs.lines, timeout_s=5)
        assert any("CERTIFICATE_VERIFY_FAILED" in line for line in logs.having("Cannot connect to host"))
        assert not await is_live(redis)
        assert not await redis.exists(keys.price("BOSCHLTD"))


async def test_dns_down_everywhere_is_reported_and_the_last_good_address_keeps_reconnects_going(
    tls_sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings(settings, tls_sim), redis):
        await eventually(lambda: is_live(redis), timeout_s=5)
        assert tls_sim.dns is not None
        tls_sim.dns.stop()  # now every resolver fails
        mark = len(logs.lines)
        await tls_sim.inject("drop", 0.05)
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=6)
        assert any(
            line.startswith("[DNS] ⚠️ Every resolver failed; using the remembered address") for line in logs.after(mark)
        )
        assert (await status(redis)).dns_resolver == "remembered"


async def test_no_address_at_all_is_a_dns_failure(settings: Settings, redis: Redis, logs: Logs) -> None:
    lonely = fast(settings, upstox_api_base=f"https://{HOST}:9", dns_fallback_servers=[], dns_timeout_s=0.5)
    async with running_feed(lonely, redis):
        await eventually(lambda: "[ERROR] Reconnection failed - DNS still failing" in logs.lines, timeout_s=5)
        assert logs.lines.index("[ERROR] Connection failed - DNS still failing") < logs.lines.index(
            "[ERROR] Reconnection failed - DNS still failing"
        )
        assert f"[DNS] ❌ Cannot resolve {HOST}: every resolver failed" in logs.lines
        current = await status(redis)
        assert not current.connected and current.network_errors >= 2 and "cannot resolve" in current.last_error


async def test_the_rest_ltp_poll_goes_through_fallback_dns_and_verified_tls(
    tls_sim: Simulator, settings: Settings, redis: Redis
) -> None:
    """Layer 2b reaches Upstox the way the WebSocket does: a host only the fallback DNS knows, TLS checked."""
    await redis.hset(keys.FEED_SUBSCRIPTIONS, "BOSCHLTD", "NSE_EQ|INE323A01026")  # an open position
    async with running_feed(feed_settings(settings, tls_sim, rest_poll_interval_s=0.3), redis) as feed:
        await eventually(lambda: is_live(redis), timeout_s=5)
        await tls_sim.inject("drop", 30)
        tls_sim.market.set_price("BOSCHLTD", 69000)
        await eventually(lambda: _rest_price(redis, "BOSCHLTD", "690.00"), timeout_s=5)
        assert feed.rest_poller.polls >= 1


async def _rest_price(redis: Redis, symbol: str, ltp: str) -> bool:
    row = await redis.hgetall(keys.price(symbol))
    return row.get("ltp") == ltp and row.get("rest_at") == row.get("as_of")
