"""The feed in-process against the in-process simulator and a real Redis, with compressed time."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.instruments import instrument_index
from libs.common.models import FeedState, FeedStatus
from libs.common.settings import Settings
from services.feed.subscriptions import watchlist
from services.sim.server import Simulator, running_simulator
from tests.feed.conftest import Logs, fast, running_feed
from tests.helpers import eventually

pytestmark = pytest.mark.integration

BOSCH = "NSE_EQ|INE323A01026"
WAITING = re.compile(r"^\[VERBOSE\] Waiting (\d+\.\d) seconds before retry \(with jitter\)\.\.\.$")


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(fast(settings)) as running:
        yield running


@pytest.fixture
def feed_settings(settings: Settings, sim: Simulator) -> Settings:
    return fast(settings, upstox_api_base=sim.rest_url)


async def status(redis: Redis) -> FeedStatus:
    return FeedStatus.from_redis(await redis.hgetall(keys.FEED_STATUS))


async def _status_with_data(redis: Redis) -> FeedStatus | None:
    current = await status(redis)
    return current if current.last_data_at is not None and current.market_open is not None else None


async def is_live(redis: Redis) -> bool:
    return (await status(redis)).connected


async def price_of(redis: Redis, symbol: str) -> dict[str, str]:
    return await redis.hgetall(keys.price(symbol))


async def fresh_price(redis: Redis, symbol: str, ltp: str) -> bool:
    return (await price_of(redis, symbol)).get("ltp") == ltp


def waits(logs: Logs, start: int = 0) -> list[float]:
    return [float(m.group(1)) for line in logs.after(start) if (m := WAITING.match(line))]


async def test_ticks_land_in_redis_with_fields_expiry_index_status_and_heartbeat(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    expected = len(watchlist(feed_settings, instrument_index()))
    async with redis.pubsub() as pubsub, running_feed(feed_settings, redis):
        await pubsub.subscribe(keys.FEED_STATUS_CHANNEL)
        await eventually(lambda: is_live(redis))
        sim.market.set_price("BOSCHLTD", 57500)
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "575.00"))
        row = await price_of(redis, "BOSCHLTD")
        assert row["instrument_key"] == BOSCH
        assert row["cp"] == "735.00"
        assert abs(int(row["ltt_ms"]) / 1000 - time.time()) < 5
        assert abs(float(row["as_of"]) - time.time()) < 2
        assert feed_settings.price_cache_ttl_s - 3 <= await redis.ttl(keys.price("BOSCHLTD")) <= 300
        await eventually(lambda: redis.zcard(keys.PRICE_INDEX), timeout_s=5)
        assert await redis.zscore(keys.PRICE_INDEX, "BOSCHLTD") is not None

        current = await eventually(lambda: _status_with_data(redis), timeout_s=2)
        assert current.state is FeedState.LIVE and current.token_ok is True and current.market_open is True
        assert current.subscribed_symbols == expected >= 200
        assert current.reconnect_attempts == 0 and current.network_errors == 0
        assert current.last_data_at is not None and abs(current.last_data_at - time.time()) < 2
        assert await redis.ttl(keys.heartbeat("feed")) > 0
        assert sum(sum(c["subscriptions"].values()) for c in sim.feeder.state()) == expected  # type: ignore[union-attr]

        notices = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                notices.append(json.loads(msg["data"])["state"])
        assert notices[:2] == ["connecting", "live"]
    assert "[SUCCESS] WebSocket connection established!" in logs.lines
    ws_lines = [m for line, m in zip(logs.lines, logs.modules, strict=True) if "WebSocket" in line]
    assert ws_lines and all(m.startswith("services.feed.websocket") for m in ws_lines)  # `grep websocket` finds them
    assert (await status(redis)).state is FeedState.CLOSED


async def test_price_ttl_follows_the_setting(settings: Settings, sim: Simulator, redis: Redis) -> None:
    """An unusual PRICE_CACHE_TTL_S (37 s) is the expiry of every price the feed writes, first or later."""
    ttl_settings = fast(settings, upstox_api_base=sim.rest_url, price_cache_ttl_s=37)
    async with running_feed(ttl_settings, redis):
        await eventually(lambda: is_live(redis))
        sim.market.set_price("BOSCHLTD", 57500)
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "575.00"))
        assert 34 <= await redis.ttl(keys.price("BOSCHLTD")) <= 37
        await redis.expire(keys.price("BOSCHLTD"), 1000)
        sim.market.set_price("BOSCHLTD", 57600)
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "576.00"))
        assert 34 <= await redis.ttl(keys.price("BOSCHLTD")) <= 37


async def test_the_feed_trims_expired_symbols_from_the_index(
    sim: Simulator, feed_settings: Settings, redis: Redis
) -> None:
    expired_as_of = time.time() - feed_settings.price_cache_ttl_s - 5
    await redis.zadd(keys.PRICE_INDEX, {"GONE": expired_as_of, "RECENT": time.time() - 5})
    async with running_feed(feed_settings, redis):

        async def trimmed() -> bool:
            return await redis.zscore(keys.PRICE_INDEX, "GONE") is None

        await eventually(trimmed, timeout_s=5)
        assert await redis.zscore(keys.PRICE_INDEX, "RECENT") is not None


async def test_drop_reconnects_with_backoff_resubscribes_and_prices_are_fresh_again(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis) as feed:
        await eventually(lambda: is_live(redis))
        await asyncio.sleep(feed_settings.reconnect_base_delay_s)  # a link that lived: its drop is retried at once
        mark = len(logs.lines)
        await sim.inject("drop", 1.2)
        await eventually(lambda: status(redis), timeout_s=2)
        await eventually(lambda: "[VERBOSE] Attempting reconnection..." in logs.after(mark))
        reconnecting = await status(redis)
        assert not reconnecting.connected and reconnecting.state is FeedState.RECONNECTING
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=6)
        sim.market.set_price("BOSCHLTD", 60000)
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "600.00"), timeout_s=2)
        after = await status(redis)
        assert after.connected and after.reconnect_attempts == 0 and after.network_errors >= 2
        assert sum(sum(c["subscriptions"].values()) for c in sim.feeder.state()) == len(feed.subscriptions.wanted)  # type: ignore[union-attr]

    lines = logs.feed_after(mark)
    i = lines.index("[WARNING] WebSocket connection closed")
    assert lines[i + 1 : i + 4] == [
        "[VERBOSE] Reason: connection lost (no close frame)",
        "[VERBOSE] Reconnecting (attempt 1/10)...",
        "[VERBOSE] Waiting 0.0 seconds before retry (with jitter)...",  # the link had lived: attempt 1 at once
    ]
    assert lines[i + 4 : i + 7] == [
        "[VERBOSE] Attempting reconnection...",
        "[ERROR] Reconnection failed",  # the feeder refuses for 1.2 s
        "[VERBOSE] Reason: WebSocket connect failed: ConnectionRefusedError: "
        + lines[i + 6].split("ConnectionRefusedError: ", 1)[-1],
    ]
    assert lines[i + 7] == "[VERBOSE] Reconnecting (attempt 2/10)..."
    assert lines.index("[SUCCESS] Reconnection successful!") > i + 7
    assert "[DNS] Checking DNS health..." not in logs.lines  # an address needs no DNS check
    delays = waits(logs, mark)
    assert delays[0] == 0.0 and all(d < 0.1 for d in delays[1:5]), delays  # at once, then 4 quick ones (0.01-0.02 s)
    assert delays[5:] and all(0.2 <= d <= 0.5 for d in delays[5:]), delays  # then [base, cap]


async def test_a_server_that_accepts_then_closes_still_sees_the_delay(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        mark = len(logs.lines)
        await sim.inject("close", 1.5)
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=8)
    attempts = [t for t, line in zip(logs.times[mark:], logs.after(mark), strict=True) if "Attempting" in line]
    assert len(attempts) >= 3  # the server accepted and closed at once, repeatedly
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.19 for gap in gaps), gaps
    lines = logs.feed_after(mark)
    i = lines.index("[WARNING] WebSocket connection closed")
    assert lines[i + 1] == "[VERBOSE] Reason: closed by the server (code 1000: simulated close)"
    assert "[ERROR] Reconnection failed" in lines


async def test_mute_connection_is_an_outage_and_vouching_stops_so_ages_grow(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        sim.market.set_price("BOSCHLTD", 57500)  # pinned: a quiet symbol from now on
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "575.00"))

        async def bosch_as_of() -> float:
            return float((await price_of(redis, "BOSCHLTD"))["as_of"])

        written = await bosch_as_of()
        # A quiet symbol on a healthy connection is vouched for: its as_of keeps moving.
        await eventually(lambda: _newer(bosch_as_of(), written + 0.5), timeout_s=3)
        assert time.time() - await bosch_as_of() < 1.0

        mark = len(logs.lines)
        await sim.inject("mute", 2.5)
        await eventually(lambda: "[WARNING] WebSocket connection closed" in logs.after(mark), timeout_s=3)
        lines = logs.feed_after(mark)
        i = lines.index("[WARNING] WebSocket connection closed")
        assert lines[i + 1] == "[VERBOSE] Reason: no data for 1.0 s while the market is open (mute connection)"
        frozen = await bosch_as_of()
        await asyncio.sleep(1.0)  # the outage goes on (the simulator stays mute): nothing vouches
        assert await bosch_as_of() == frozen
        assert time.time() - frozen >= 1.5
        await eventually(lambda: _newer(bosch_as_of(), time.time() - 0.8), timeout_s=6)
    assert "[SUCCESS] Reconnection successful!" in logs.after(mark)


async def _newer(value: asyncio.Future[float] | object, than: float) -> bool:
    result = await value  # type: ignore[misc]
    return bool(result > than)


async def test_rejected_token_is_reported_and_retried_slowly(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        mark = len(logs.lines)
        await sim.inject("auth", 1.5)
        await sim.inject("drop", 0.05)
        await eventually(lambda: await_status_token(redis), timeout_s=3)
        rejected = await status(redis)
        assert "401" in rejected.last_error and not rejected.connected
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=6)
        assert (await status(redis)).token_ok is True
    lines = logs.after(mark)
    assert any(line.startswith("[ERROR] Access token rejected (HTTP 401)") for line in lines)
    assert "[ERROR] Reconnection failed - access token rejected (HTTP 401)" in lines
    i = logs.index("[ERROR] Reconnection failed - access token rejected (HTTP 401)", mark)
    slow = waits(logs, i)[0]
    assert 0.9 <= slow <= 1.1  # AUTH_RETRY_DELAY_S (1.0 here) with jitter, not the fast backoff
    assert "sim-access-token" not in "\n".join(logs.lines)


async def await_status_token(redis: Redis) -> bool:
    return (await status(redis)).token_ok is False


async def test_rest_down_fails_authorization_then_recovers(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        mark = len(logs.lines)
        await sim.inject("rest_down", 1.0)
        await sim.inject("drop", 0.05)
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=6)
        sim.market.set_price("KAYNES", 20410)
        await eventually(lambda: fresh_price(redis, "KAYNES", "204.10"), timeout_s=2)
    lines = logs.feed_after(mark)
    i = lines.index("[ERROR] Reconnection failed")
    assert lines[i + 1].startswith("[VERBOSE] Reason: authorize answered HTTP 5")


async def test_dead_connection_without_pongs_is_detected_by_ping_timeout(
    sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, feed_silence_timeout_s=30)
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        mark = len(logs.lines)
        await sim.inject("mute", 5)
        for conn in list(sim.feeder.connections):
            conn.ws.transport.pause_reading()  # the peer stops answering: a silently dead link
        started = time.monotonic()
        await eventually(lambda: "[WARNING] WebSocket connection closed" in logs.after(mark), timeout_s=3)
        assert time.monotonic() - started < 1.5  # ping every 0.5 s, pong timeout 0.5 s
        lines = logs.feed_after(mark)
        i = lines.index("[WARNING] WebSocket connection closed")
        assert lines[i + 1] == "[VERBOSE] Reason: no pong within 0.5 s (dead connection)"
        # The link had lived: attempt 1 goes at once, on a fresh connection (the dead one stays paused).
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=3)
        lines = logs.feed_after(mark)
        assert lines[i + 2 : i + 4] == [
            "[VERBOSE] Reconnecting (attempt 1/10)...",
            "[VERBOSE] Waiting 0.0 seconds before retry (with jitter)...",
        ]


async def test_corrupt_frames_are_counted_and_dropped_without_killing_the_connection(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        mark = len(logs.lines)
        for conn in list(sim.feeder.connections):
            conn.queue.put_nowait(b"\x12\x05\x0a")  # truncated protobuf
            conn.queue.put_nowait(b"\xff\xff\xff")
            await conn.ws.send("not a protobuf frame")
        await eventually(lambda: _corrupt_count(redis, 3), timeout_s=3)
        sim.market.set_price("BOSCHLTD", 58000)
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "580.00"), timeout_s=2)
        current = await status(redis)
        assert current.connected and current.network_errors == 0
    warnings = [line for line in logs.after(mark) if "corrupt feed frame" in line]
    assert len(warnings) == 1  # at most one warning every few seconds
    assert warnings[0].startswith("[WARNING] Dropped a corrupt feed frame (1 so far)")
    assert "[WARNING] WebSocket connection closed" not in logs.after(mark)


async def _corrupt_count(redis: Redis, n: int) -> bool:
    return (await status(redis)).corrupt_frames >= n


async def test_subscription_requests_and_the_positions_hash_are_followed(
    sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, feed_watchlist=["BOSCHLTD"])
    async with running_feed(feed_settings, redis) as feed:
        await eventually(lambda: is_live(redis))
        assert (await status(redis)).subscribed_symbols == 1
        await redis.publish(keys.SUBSCRIPTION_REQUESTS_CHANNEL, "sub KAYNES NSE_EQ|INE918Z01012")
        sim.market.set_price("KAYNES", 20410)
        await eventually(lambda: _has(redis, "KAYNES"), timeout_s=3)

        await redis.hset(keys.FEED_SUBSCRIPTIONS, "NIFTY", "NSE_INDEX|Nifty 50")  # no notice: the timer finds it
        await eventually(lambda: _has(redis, "NIFTY"), timeout_s=3)
        assert set(feed.subscriptions.wanted) == {"BOSCHLTD", "KAYNES", "NIFTY"}
        await eventually(lambda: _subscribed(redis, 3), timeout_s=2)

        await sim.inject("drop", 0.05)
        mark = len(logs.lines)
        await eventually(lambda: "[SUCCESS] Reconnection successful!" in logs.after(mark), timeout_s=5)
        await eventually(lambda: _sim_subscriptions(sim) == 3, timeout_s=2)  # resubscribed everything

        await redis.publish(keys.SUBSCRIPTION_REQUESTS_CHANNEL, "unsub KAYNES")
        await eventually(lambda: _sim_subscriptions(sim) == 2, timeout_s=2)


async def _has(redis: Redis, symbol: str) -> bool:
    return bool(await redis.exists(keys.price(symbol)))


async def _subscribed(redis: Redis, n: int) -> bool:
    return (await status(redis)).subscribed_symbols == n


def _sim_subscriptions(sim: Simulator) -> int:
    return sum(len(c.subs) for c in sim.feeder.connections)


async def test_redirect_endpoint_style_connects(settings: Settings, sim: Simulator, redis: Redis) -> None:
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, feed_connect_style="redirect")
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        sim.market.set_price("BOSCHLTD", 57000)
        await eventually(lambda: fresh_price(redis, "BOSCHLTD", "570.00"))


async def test_market_closed_keeps_vouching_on_pings_alone(
    sim: Simulator, feed_settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        await eventually(lambda: _has(redis, "BOSCHLTD"))
        sim.market.force_status("NORMAL_CLOSE")
        await eventually(lambda: _market_closed(redis), timeout_s=2)
        mark = len(logs.lines)
        await asyncio.sleep(2.0)  # twice the silence timeout: a closed market is quiet, not mute
        assert "[WARNING] WebSocket connection closed" not in logs.after(mark)
        as_of = float((await price_of(redis, "BOSCHLTD"))["as_of"])
        assert time.time() - as_of < 1.2  # vouched on pongs
    assert "[INFO] Market is closed (per market_info)" in logs.lines


async def _market_closed(redis: Redis) -> bool:
    return (await status(redis)).market_open is False


async def test_a_quiet_watchlist_with_pings_answered_is_reported_not_reconnected(
    sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    """Stocks only (no index proves the market ticks): data silence with pings answered is no outage."""
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, feed_watchlist=["BOSCHLTD", "KAYNES"])
    async with running_feed(feed_settings, redis):
        await eventually(lambda: is_live(redis))
        mark = len(logs.lines)
        await sim.inject("mute", 3.5)  # data stops; the simulator still pings and answers ours
        quiet = "[WARNING] No market data for 1.0 s, pings answered"
        await eventually(lambda: any(line.startswith(quiet) for line in logs.after(mark)), timeout_s=3)
        await asyncio.sleep(2.0)  # twice the silence timeout more: still no reconnect
        assert await is_live(redis)
        assert "[WARNING] WebSocket connection closed" not in logs.after(mark)
        assert sum(line.startswith(quiet) for line in logs.after(mark)) == 1  # reported once per silence
        assert (await status(redis)).reconnect_attempts == 0
