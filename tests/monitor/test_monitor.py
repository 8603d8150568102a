"""The monitor against a real Redis with hand-written brokers, time driven by a ManualClock (guide numbers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.models import CloseReason, CloseRecord, PositionState, PriceSource
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.helpers import eventually
from tests.monitor.conftest import (
    LogLines,
    ScriptedBroker,
    compressed,
    long_bosch,
    long_kaynes,
    set_feed,
    short_reliance,
    write_price,
)

pytestmark = pytest.mark.integration


async def closed_record(store: PositionStore, symbol: str) -> CloseRecord:
    position = await store.get(symbol)
    assert position is not None
    assert position.state is PositionState.CLOSED
    journal = [r for r in await store.journal() if isinstance(r, CloseRecord) and r.symbol == symbol]
    assert len(journal) == 1
    return journal[0]


@pytest.mark.parametrize(
    ("position", "price", "line"),
    [
        (long_bosch(), "698.25", "[SL] BOSCHLTD: Price ₹698.25 <= SL ₹698.25"),
        (long_bosch(), "800.00", "[TP] BOSCHLTD: Price ₹800.00 >= TP ₹800.00"),
        (short_reliance(), "1450.00", "[SL] RELIANCE: Price ₹1450.00 >= SL ₹1450.00"),
        (short_reliance(), "1350.00", "[TP] RELIANCE: Price ₹1350.00 <= TP ₹1350.00"),
    ],
)
async def test_live_tick_at_the_level_closes_without_fallback(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines,
    make_monitor: Any, position: Any, price: str, line: str,
) -> None:  # fmt: skip
    await set_feed(redis, settings, clock, live=True)
    await store.open(position)
    opening = "1400.00" if position.symbol == "RELIANCE" else "735.00"
    await write_price(redis, settings, position.symbol, opening, clock.now() - 1)
    monitor = make_monitor()
    await monitor.start()
    report = await monitor.sweep_once()
    assert (report.feed_live, report.checked, report.triggered) == (True, 1, 0)
    assert position.symbol in monitor.watched

    notice = await write_price(redis, settings, position.symbol, price, clock.now())
    assert monitor.on_notice(notice) == 1
    await monitor.drain()
    record = await closed_record(store, position.symbol)
    assert record.price_source is PriceSource.LIVE
    assert record.closed_by == "monitor"
    entry = int(position.entry_price)
    exit_ = record.exit_price
    assert record.pnl == ((exit_ - entry) if position.side == "long" else (entry - exit_)) * position.quantity
    lines = logs.lines("SL", "TP", "FALLBACK", "SUCCESS")
    assert lines[0] == line
    assert lines[1].startswith(f"[SUCCESS] Position closed successfully: {position.symbol} exit ")
    assert not logs.lines("FALLBACK")
    kinds = [e["kind"] for e in await store.recent_events()]
    assert kinds[:3] == ["closed", "closing", "opened"]


async def test_a_notice_just_inside_the_levels_does_nothing(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "735.00", clock.now())
    monitor = make_monitor()
    await monitor.sweep_once()
    for price in ("698.30", "799.95"):
        assert monitor.on_notice(await write_price(redis, settings, "BOSCHLTD", price, clock.now())) == 0
    assert monitor.on_notice('{"as_of": 1, "prices": {"OTHER": "1.00"}}') == 0
    assert monitor.on_notice("not json") == 0
    assert monitor.bad_notices == 1
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.OPEN


async def test_stale_cached_price_triggers_sl_with_the_guides_lines(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "575.00", clock.now() - 45)
    await set_feed(redis, settings, clock, live=False)
    monitor = make_monitor()
    report = await monitor.sweep_once()
    assert (report.feed_live, report.triggered) == (False, 1)
    await monitor.drain()
    assert logs.lines("FALLBACK", "SL", "TP", "SUCCESS") == [
        "[FALLBACK] Using stale price for BOSCHLTD: ₹575.00 (45s old)",
        "[SL] BOSCHLTD: Price ₹575.00 <= SL ₹698.25 (FALLBACK)",
        "[SUCCESS] Position closed successfully: BOSCHLTD exit ₹575.00 pnl ₹-6240.00 (order paper-1)",
    ]
    record = await closed_record(store, "BOSCHLTD")
    assert (record.price_source, record.price_age_s, record.pnl) == (PriceSource.STALE, 45.0, -624000)


async def test_example_1_brief_disconnection_tp_on_a_10s_old_cached_price(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_kaynes())
    await write_price(redis, settings, "KAYNES", "195.00", clock.now())
    monitor = make_monitor()
    await monitor.sweep_once()
    # The feed drops; the last frame before it carried 204.10; 10 s later the sweep acts on the cached price.
    await write_price(redis, settings, "KAYNES", "204.10", clock.now(), publish=False)
    await set_feed(redis, settings, clock, live=False)
    clock.advance(10)
    await monitor.sweep_once()
    await monitor.drain()
    assert logs.lines("FALLBACK", "TP", "SUCCESS") == [
        "[FALLBACK] Using cached price for KAYNES: ₹204.10 (10s old)",
        "[TP] KAYNES: Price ₹204.10 >= TP ₹197.76 (FALLBACK)",
        "[SUCCESS] Position closed successfully: KAYNES exit ₹204.10 pnl ₹1410.00 (order paper-1)",
    ]
    assert logs.lines("WARNING") == ["[WARNING] Feed is not live: checking SL/TP on cached prices"]
    record = await closed_record(store, "KAYNES")
    assert (record.price_source, record.price_age_s) == (PriceSource.CACHED, 10.0)


async def test_connected_status_with_an_expired_feed_heartbeat_is_not_live(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    """A feed killed while connected leaves `feed:status` saying connected: its expired heartbeat is what tells."""
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_kaynes())
    await write_price(redis, settings, "KAYNES", "204.10", clock.now(), publish=False)
    await redis.delete(keys.heartbeat("feed"))  # expired: the process is gone, nobody rewrote its status
    clock.advance(10)
    monitor = make_monitor()
    report = await monitor.sweep_once()
    await monitor.drain()
    assert report.feed_live is False
    assert logs.lines("FALLBACK", "TP") == [
        "[FALLBACK] Using cached price for KAYNES: ₹204.10 (10s old)",
        "[TP] KAYNES: Price ₹204.10 >= TP ₹197.76 (FALLBACK)",
    ]
    assert logs.lines("WARNING") == ["[WARNING] Feed is not live: checking SL/TP on cached prices"]
    record = await closed_record(store, "KAYNES")
    assert (record.price_source, record.price_age_s) == (PriceSource.CACHED, 10.0)


async def test_example_2_extended_outage_warns_once_then_again_for_the_next_outage(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "720.00", clock.now())
    await set_feed(redis, settings, clock, live=False)
    monitor = make_monitor()
    for _ in range(320):  # one sweep a second for 320 s of outage
        clock.advance(1)
        await monitor.sweep_once()
    fallback = logs.lines("FALLBACK")
    assert fallback[0] == "[FALLBACK] Using cached price for BOSCHLTD: ₹720.00 (1s old)"
    assert "[FALLBACK] Using stale price for BOSCHLTD: ₹720.00 (31s old)" in fallback
    assert len(fallback) == 31  # throttled to one line per 10 s (30 of them) plus the expiry line
    assert fallback[-1] == "[FALLBACK] Price cache expired for BOSCHLTD"
    assert logs.lines("WARNING")[-1] == "[WARNING] Can't monitor BOSCHLTD - no fresh prices"
    assert logs.count("Can't monitor BOSCHLTD") == 1
    events = [e for e in await store.recent_events() if e["kind"] == "unmonitored"]
    assert len(events) == 1
    assert events[0]["message"] == "Can't monitor BOSCHLTD - no fresh prices"
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.unmonitored_since == events[0]["since"]

    # A restarted monitor does not repeat the warning for the same outage.
    again = make_monitor()
    await again.sweep_once()
    assert logs.count("Can't monitor BOSCHLTD") == 1

    # Prices return, then a second outage outlives the cache: warned again, once.
    await set_feed(redis, settings, clock, live=True)
    await write_price(redis, settings, "BOSCHLTD", "721.00", clock.now())
    await again.sweep_once()
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.unmonitored_since is None
    assert (await store.recent_events(1))[0]["kind"] == "monitored_again"
    await set_feed(redis, settings, clock, live=False)
    for _ in range(3):
        clock.advance(150)
        await again.sweep_once()
    assert logs.count("Can't monitor BOSCHLTD") == 2
    assert logs.count("Price cache expired for BOSCHLTD") == 2


async def test_a_key_expired_in_redis_is_layer_3_too(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await set_feed(redis, settings, clock, live=False)  # no price:BOSCHLTD at all
    monitor = make_monitor()
    report = await monitor.sweep_once()
    assert report.unmonitored == 1
    assert logs.lines("FALLBACK", "WARNING")[-2:] == [
        "[FALLBACK] Price cache expired for BOSCHLTD",
        "[WARNING] Can't monitor BOSCHLTD - no fresh prices",
    ]


async def test_a_just_opened_position_on_a_live_feed_waits_for_its_first_tick(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_bosch(opened_at=clock.now()))
    monitor = make_monitor()
    assert (await monitor.sweep_once()).unmonitored == 0
    assert logs.count("Can't monitor") == 0


async def test_broker_error_keeps_it_open_and_retries_with_backoff(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    broker = ScriptedBroker(failures=2)
    monitor = make_monitor(broker)  # base 0.1 s, cap 0.4 s, jitter 0 -> 0.075 s, 0.15 s
    await monitor.sweep_once()
    await monitor.drain()
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert (position.state, position.close_attempts) == (PositionState.OPEN, 1)
    assert "503" in position.last_error
    assert position.next_attempt_at == pytest.approx(clock.now() + 0.075)
    status = await redis.hgetall(keys.SERVICES_STATUS)
    assert "503" in status["monitor.last_broker_error"]

    await monitor.sweep_once()  # backoff not over: no second order
    await monitor.drain()
    assert broker.orders == 1
    clock.advance(0.08)
    await monitor.sweep_once()
    await monitor.drain()
    assert broker.orders == 2
    clock.advance(0.16)
    await monitor.sweep_once()
    await monitor.drain()
    assert broker.orders == 3
    record = await closed_record(store, "BOSCHLTD")
    assert record.exit_price == 69000
    errors = logs.lines("ERROR")
    assert errors[0].startswith("[ERROR] Close of BOSCHLTD failed (attempt 1): broker answered 503")
    assert errors[0].endswith("position stays open, retrying in 0.1s")
    assert errors[1].startswith("[ERROR] Close of BOSCHLTD failed (attempt 2)")
    assert [e["kind"] for e in await store.recent_events() if e["kind"] == "close_failed"] == ["close_failed"] * 2


async def test_a_malformed_record_is_reported_once_and_skipped(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "575.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    await redis.sadd(keys.OPEN_POSITIONS, "BROKEN", "GHOST")
    await redis.hset(keys.position("BROKEN"), mapping={"symbol": "BROKEN", "side": "sideways", "quantity": "abc"})
    await redis.hset(keys.price("KAYNES"), mapping={"ltp": "lots", "instrument_key": "x", "as_of": "now"})
    await store.open(long_kaynes())
    monitor = make_monitor()
    report = await monitor.sweep_once()
    assert (report.malformed, report.triggered) == (3, 1)  # BROKEN, GHOST (no hash), KAYNES's price
    await monitor.drain()
    await closed_record(store, "BOSCHLTD")
    await monitor.sweep_once()
    errors = logs.lines("ERROR")
    assert len(errors) == 3
    assert any(line.startswith("[ERROR] Skipping malformed record position:BROKEN:") for line in errors)
    assert any(line.startswith("[ERROR] Skipping malformed record price:KAYNES:") for line in errors)
    assert {e["symbol"] for e in await store.recent_events() if e["kind"] == "malformed"} == {"BROKEN", "GHOST"}


async def test_startup_asks_the_feed_for_every_open_symbol(
    redis: Redis, store: PositionStore, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await store.open(long_kaynes())
    await redis.delete(keys.FEED_SUBSCRIPTIONS)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.SUBSCRIPTION_REQUESTS_CHANNEL)
    await make_monitor().start()
    assert await redis.hgetall(keys.FEED_SUBSCRIPTIONS) == {
        "BOSCHLTD": "NSE_EQ|INE323A01026",
        "KAYNES": "NSE_EQ|INE918Z01012",
    }
    got: list[str] = []

    async def two_requests() -> bool:
        message = await pubsub.get_message(timeout=0.1)
        if message:
            got.append(message["data"])
        return len(got) == 2

    await eventually(two_requests, timeout_s=3)
    assert sorted(got) == ["sub BOSCHLTD NSE_EQ|INE323A01026", "sub KAYNES NSE_EQ|INE918Z01012"]
    await pubsub.aclose()


async def test_events_keep_the_tick_path_current(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    monitor = make_monitor()
    await store.open(long_bosch())
    events = await store.recent_events(1)
    monitor.on_event(json.dumps(events[0]))
    await eventually(lambda: "BOSCHLTD" in monitor.watched, timeout_s=3)
    await store.update_levels("BOSCHLTD", stop_loss=72000, take_profit=None)
    monitor.on_event(json.dumps((await store.recent_events(1))[0]))
    await eventually(lambda: monitor.watched["BOSCHLTD"].stop_loss == 72000, timeout_s=3)
    monitor.on_event(json.dumps({"kind": "closing", "symbol": "BOSCHLTD"}))
    assert "BOSCHLTD" not in monitor.watched
    monitor.on_event("garbage")


async def test_the_sweep_sees_changed_levels_of_an_already_parsed_position(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "710.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    monitor = make_monitor()
    assert (await monitor.sweep_once()).triggered == 0
    await store.update_levels("BOSCHLTD", stop_loss=71000, take_profit=None)  # SL moved up to the price
    assert (await monitor.sweep_once()).triggered == 1
    await monitor.drain()
    assert logs.lines("SL") == ["[SL] BOSCHLTD: Price ₹710.00 <= SL ₹710.00"]


async def test_startup_leaves_a_young_claim_to_its_closer(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    # An api close claimed a moment ago may be about to send its order: reconciling it at start-up could
    # reopen it and let a second order follow. Only a claim older than MONITOR_STUCK_CLOSE_S is settled.
    await store.open(long_bosch())
    await set_feed(redis, settings, clock, live=True)
    claim_id, _ = await store.claim("BOSCHLTD", CloseReason.EMERGENCY)
    broker = ScriptedBroker()
    monitor = make_monitor(broker)
    await monitor.start()
    await monitor.sweep_once()
    await monitor.drain(timeout_s=2)  # let any reconcile it started finish before looking
    young = await store.get("BOSCHLTD")
    assert young is not None
    assert young.state is PositionState.CLOSING
    assert young.claim_id == claim_id
    clock.advance(1.0)  # past the compressed MONITOR_STUCK_CLOSE_S (0.5 s): now it is stuck
    await monitor.sweep_once()
    await eventually(lambda: _state(store, PositionState.OPEN), timeout_s=5)
    assert broker.orders == 0


async def _state(store: PositionStore, state: PositionState) -> bool:
    position = await store.get("BOSCHLTD")
    return position is not None and position.state is state


async def test_a_stop_that_meets_a_sweep_request_still_stops(settings: Settings, make_monitor: Any) -> None:
    """SIGTERM landing just as a sweep is requested (a tick, a resubscribe) stops the monitor: the cancel must
    not be swallowed by the wait between sweeps (Python 3.11's `asyncio.wait_for` loses it), or `run()` hangs."""
    monitor = make_monitor(settings_=compressed(settings, monitor_sweep_interval_s=30))
    task = asyncio.create_task(monitor.run())
    try:
        await eventually(lambda: monitor.sweeps >= 1 and monitor._wake._waiters, timeout_s=5)  # waiting for a sweep
        monitor.request_sweep()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done, "the monitor swallowed its stop"
    finally:
        for leftover in [t for t in asyncio.all_tasks() if t.get_name().startswith("monitor")] + [task]:
            leftover.cancel()
