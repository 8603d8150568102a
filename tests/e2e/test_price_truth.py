"""Price truth end to end, with real processes: REST keeps prices fresh through a WebSocket-only outage (Layer 2b),
a halted instrument ages truly and its SL still fires, a killed feed never makes an old price look live."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def _open_long(stack: Stack, symbol: str, quantity: int, entry: float, stop_loss: float) -> None:
    """As a trader does in simulator mode: the position exists at the broker first, then the guard watches it."""
    await stack.sim("POST", "/sim/trade", json={"symbol": symbol, "side": "buy", "quantity": quantity})
    await stack.open_position(symbol, "long", quantity, entry, at_broker=False, stop_loss=stop_loss)


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def test_websocket_drop_with_rest_up_keeps_prices_fresh_and_an_sl_fires_as_a_rest_decision(
    tmp_path: Path,
) -> None:
    poll_s = 1.0
    async with Stack(tmp_path, REST_POLL_INTERVAL_S=str(poll_s)) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await _open_long(stack, "BOSCHLTD", 10, 735.0, 698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
        await stack.wait_connected(True)
        mark = stack.mark("monitor")

        await stack.fault("drop", 60)  # the WebSocket only: REST keeps answering
        await stack.wait_connected(False)

        async def rest_fresh() -> dict[str, object] | None:
            health = await stack.health()
            entry = health["price_cache"]["cache_entries"]["BOSCHLTD"]
            ok = health["websocket"]["price_source"] == "rest" and entry["source"] == "rest" and not entry["is_stale"]
            return entry if ok else None

        await eventually(rest_fresh, timeout_s=poll_s * 4)
        await stack.wait_log("feed", "[FALLBACK] WebSocket down, Upstox REST answers: polling LTP", timeout_s=5)
        # Fresh through the outage: a few polls later the price is still young, though the WebSocket is down.
        now = time.time()
        await eventually(lambda: _as_of_moved(stack, "BOSCHLTD", now), timeout_s=poll_s * 3)

        crossed_at = time.time()
        await stack.set_price("BOSCHLTD", 690.0)
        await stack.wait_log("monitor", "[SL] BOSCHLTD: Price ₹690.00 <= SL ₹698.25 (FALLBACK)", since=mark)
        assert time.time() - crossed_at <= poll_s + 0.75  # within a poll interval (plus the processes' own time)
        assert stack.count("monitor", "[FALLBACK] Using REST price for BOSCHLTD: ₹690.00", since=mark) == 1
        closes = await eventually(stack.closes, timeout_s=10)
        assert [(c["symbol"], c["price_source"], c["closed_by"]) for c in closes] == [("BOSCHLTD", "rest", "monitor")]
        assert len([o for o in await stack.orders("BOSCHLTD") if o.get("tag")]) == 1


async def _events_of(stack: Stack, kind: str) -> list[dict[str, object]]:
    return [e for e in await stack.events() if e["kind"] == kind]


async def _as_of_moved(stack: Stack, symbol: str, after: float) -> bool:
    return float((await stack.price(symbol)).get("as_of", 0)) > after


async def test_a_halted_instrument_among_ticking_ones_ages_truly_and_its_sl_fires_as_cached(tmp_path: Path) -> None:
    halt_detect_s = 3.0
    async with Stack(tmp_path, HALT_DETECT_S=str(halt_detect_s), SIM_TICKS_PER_INTERVAL="100000") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("KAYNES", 200.0)  # pinned: keeps trading at ₹200
        await _open_long(stack, "KAYNES", 10, 210.0, 190.0)
        await eventually(lambda: _ltp_is(stack, "KAYNES", "200.00"))
        await stack.wait_connected(True)
        mark = stack.mark("monitor")

        await stack.sim("POST", "/sim/instrument", json={"symbol": "KAYNES", "halted": True})
        halted_at = time.time()

        async def reported() -> dict[str, object] | None:
            entry = (await stack.health(symbols="KAYNES"))["price_cache"]["cache_entries"]["KAYNES"]
            return entry if entry["is_stale"] else None

        entry = await eventually(reported, timeout_s=halt_detect_s + 3)
        assert time.time() - halted_at <= halt_detect_s + 1.0  # reported within HALT_DETECT_S of its last tick
        assert "no tick for" in str(entry["reason"]) and entry["source"] == "cached"
        assert int(entry["age_seconds"]) >= halt_detect_s - 1  # its true age, not vouched to 0
        health = await stack.health(symbols="KAYNES,BOSCHLTD")
        assert health["websocket"]["connected"] is True  # the connection is healthy; only KAYNES is silent
        assert health["price_cache"]["cache_entries"]["BOSCHLTD"]["is_stale"] is False
        await stack.wait_log("feed", "[WARNING] KAYNES: no tick for")
        await stack.wait_log("monitor", "[WARNING] KAYNES: no tick for", since=mark)  # checked with its true age
        # The feed logs its line, then publishes the event: wait for the event rather than race it.
        events = await eventually(lambda: _events_of(stack, "instrument_silent"), timeout_s=5)
        assert [e["symbol"] for e in events] == ["KAYNES"]

        resp = await stack.api("PATCH", "/api/v1/positions/KAYNES", json={"stop_loss": 205.0})
        assert resp.status_code == 200, resp.text
        await stack.wait_log("monitor", "[SL] KAYNES: Price ₹200.00 <= SL ₹205.00 (FALLBACK)", since=mark)
        closes = await eventually(stack.closes, timeout_s=10)
        assert [(c["symbol"], c["price_source"]) for c in closes] == [("KAYNES", "cached")]
        assert closes[0]["price_age_s"] >= halt_detect_s - 1


async def test_emergency_close_after_a_feed_sigkill_is_journaled_as_cached_with_its_true_age(tmp_path: Path) -> None:
    async with Stack(tmp_path) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await _open_long(stack, "BOSCHLTD", 10, 735.0, 698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
        await stack.wait_connected(True)

        stack.kill("feed")
        await stack.wait_connected(False)  # feed:status still says connected; the heartbeat tells
        assert (await stack.feed_status()).connected is True
        as_of = float((await stack.price("BOSCHLTD"))["as_of"])

        sent_at = time.time()
        resp = await stack.emergency_close("BOSCHLTD")
        answered_at = time.time()
        assert resp.status_code in (200, 202), resp.text
        closes = await eventually(stack.closes, timeout_s=10)
        assert [(c["symbol"], c["price_source"]) for c in closes] == [("BOSCHLTD", "cached")]
        # Its true age when the api decided, which lies between the request and the answer (a fixed 0.5 s around
        # the answer's time also counted the close's own broker round trips, slow on a loaded machine).
        assert sent_at - as_of - 0.01 <= closes[0]["price_age_s"] <= answered_at - as_of + 0.01
