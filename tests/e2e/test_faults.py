"""Faults from outside: a mute socket, a rejected token, a Redis restart, the broker down during an SL.

Every service runs as a real process against a private Redis; the simulator injects the faults.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from libs.common.models import PositionState
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

WAITING = re.compile(r"^\[VERBOSE\] Waiting (\d+\.\d) seconds before retry \(with jitter\)\.\.\.$")


async def test_mute_socket_is_detected_and_reconnected(tmp_path: Path) -> None:
    """Open connection, pings answered, no data while the market is open: an outage, detected and reconnected."""
    async with Stack(tmp_path) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
        await stack.wait_connected(True)
        errors_before = (await stack.feed_status()).network_errors
        mark = stack.mark("feed")
        muted_at = datetime.now()

        await stack.fault("mute", 3)
        await stack.wait_log("feed", "(mute connection)", since=mark, timeout_s=10)
        await stack.wait_log("feed", "[SUCCESS] Reconnection successful!", since=mark, timeout_s=20)
        await eventually(lambda: _muted_over(stack), timeout_s=10)
        await stack.wait_connected(True, timeout_s=20)

        # Data flows again: a live SL closes the position, once.
        await stack.set_price("BOSCHLTD", 690.0)
        await stack.wait_log("monitor", "[SL] BOSCHLTD: Price ₹690.00 <= SL ₹698.25")
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=10)
        assert len(await stack.orders("BOSCHLTD")) == 1
        assert (await stack.feed_status()).network_errors > errors_before

    feed = stack.lines("feed", mark)
    closed = feed.index("[WARNING] WebSocket connection closed")
    # Pings kept flowing (not a dead link): the reason is the silence, noticed after the silence timeout.
    assert feed[closed + 1] == "[VERBOSE] Reason: no data for 1.5 s while the market is open (mute connection)"
    assert not any("no pong" in line for line in feed)
    closed_at = next(t for t, line in stack.timed("feed", mark) if line == "[WARNING] WebSocket connection closed")
    assert (closed_at - muted_at).total_seconds() >= 1.4
    assert feed[closed + 2] == "[VERBOSE] Reconnecting (attempt 1/10)..."
    assert stack.count("monitor", "[SL] BOSCHLTD") == 1


async def test_rejected_token_is_reported_retried_slowly_then_replaced(tmp_path: Path) -> None:
    """A 401 token: no tight loop, status says the token is bad, recovery once a good token is set."""
    bad = "bad-token-5f1c9e0a7d"
    async with Stack(tmp_path, AUTH_RETRY_DELAY_S="1.5") as stack:
        await stack.start("sim")
        upstox = {"UPSTOX_ACCESS_TOKEN": bad, "UPSTOX_API_BASE": stack.sim_url, "UPSTOX_ORDER_BASE": stack.sim_url}
        await stack.start("feed", "monitor", "api", env=upstox)
        rejected = "[ERROR] Access token rejected (HTTP 401): set a valid UPSTOX_ACCESS_TOKEN"
        await stack.wait_log("feed", rejected, timeout_s=15)
        await eventually(lambda: stack.count("feed", rejected) >= 4, timeout_s=15)

        status = await stack.status()
        assert status["market"] == "upstox"
        assert status["token"]["valid"] is False and "rejected the token (401)" in status["token"]["detail"]
        assert status["feed"]["token_ok"] is False and "access token rejected" in status["feed"]["last_error"]
        assert not (await stack.health())["websocket"]["connected"]
        assert bad not in json.dumps(status)

        # The new token: the guide's "verify credentials in .env, restart".
        mark = stack.mark("feed")
        good = {"UPSTOX_ACCESS_TOKEN": "sim-access-token"}
        stack.stop("feed")
        stack.stop("api")
        stack.stop("monitor")
        await stack.start("feed", "monitor", "api", env=good)
        await stack.wait_connected(True)
        await eventually(lambda: _token_valid(stack), timeout_s=10)
        status = await stack.status()
        assert status["feed"]["token_ok"] is True and status["feed"]["last_error"] == ""
        assert stack.count("feed", "Access token rejected", since=mark) == 0

    # Slow retries: consecutive rejections are AUTH_RETRY_DELAY_S (1.5 s, +/- 10 % jitter) apart.
    times = [t for t, line in stack.timed("feed") if rejected in line]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 3 and min(gaps) >= 1.3, gaps
    first_run = stack.lines("feed")[: stack.lines("feed").index("[INFO] feed stopped")]
    waits = [float(m.group(1)) for line in first_run if (m := WAITING.match(line))]
    assert len(waits) >= 3 and all(1.35 <= w <= 1.65 for w in waits), waits
    for name in ("feed", "monitor", "api"):
        assert bad not in stack.log(name) + stack.output(name)


async def test_token_rejected_at_runtime_recovers_without_restart(tmp_path: Path) -> None:
    """The broker rejects the token for a while (sim `auth` fault): slow retries, then live again by itself."""
    async with Stack(tmp_path, AUTH_RETRY_DELAY_S="1.5") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.wait_connected(True)
        pid = stack.pid("feed")
        mark = stack.mark("feed")
        await stack.fault("auth", 4)
        await stack.fault("close", 0)  # the connection ends; the reconnection meets the rejected token
        await stack.wait_log("feed", "[ERROR] Access token rejected (HTTP 401)", since=mark, timeout_s=10)
        await eventually(lambda: _feed_token_ok(stack, False), timeout_s=5)
        await stack.wait_log("feed", "[SUCCESS] Reconnection successful!", since=mark, timeout_s=20)
        await stack.wait_connected(True)
        await eventually(lambda: _feed_token_ok(stack, True), timeout_s=5)
        assert stack.pid("feed") == pid
    assert 1 <= stack.count("feed", "Access token rejected", since=mark) <= 4  # 4 s window, 1.5 s cadence


async def test_redis_restart_mid_stream(tmp_path: Path) -> None:
    """Redis goes away and comes back: services keep running and reconnect; no position lost, none closed twice."""
    async with Stack(tmp_path) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        for symbol, ltp in (("BOSCHLTD", 720.0), ("KAYNES", 200.0), ("SBIN", 800.0)):
            await stack.set_price(symbol, ltp)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.open_position("KAYNES", "long", 10, 195.0, stop_loss=190.0)
        await stack.open_position("SBIN", "short", 5, 790.0, stop_loss=820.0)
        await eventually(lambda: _ltp_is(stack, "SBIN", "800.00"))
        await stack.set_price("SBIN", 825.0)  # closed before the outage
        await eventually(lambda: _state_is(stack, "SBIN", PositionState.CLOSED), timeout_s=10)
        pids = {name: stack.pid(name) for name in ("feed", "monitor", "api", "sim")}
        monitor_mark = stack.mark("monitor")

        stack.stop_redis()
        await stack.wait_log("monitor", "Redis unavailable", since=monitor_mark, timeout_s=10)
        await stack.set_price("BOSCHLTD", 690.0)  # crosses SL while Redis is down (the only tick it gets)
        await stack.wait_log("feed", "Cannot write prices to Redis", timeout_s=10)
        await asyncio.sleep(2)  # the outage itself lasts a while: nothing to wait for
        stack.start_redis()
        restarted_at = time.time()

        await stack.wait_log("monitor", "Redis connection restored; monitoring resumed", since=monitor_mark)
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=15)
        await stack.set_price("KAYNES", 185.0)
        await eventually(lambda: _state_is(stack, "KAYNES", PositionState.CLOSED), timeout_s=15)
        await eventually(lambda: _as_of_after(stack, "RELIANCE", restarted_at), timeout_s=10)  # prices repopulate
        await stack.wait_connected(True)

        assert {name: stack.pid(name) for name in pids} == pids and all(stack.alive(n) for n in pids)
        for symbol in ("BOSCHLTD", "KAYNES", "SBIN"):
            assert len(await stack.orders(symbol)) == 1, symbol
        closes = await stack.closes()
        assert sorted(c["symbol"] for c in closes) == ["BOSCHLTD", "KAYNES", "SBIN"]
        assert await stack.store.open_symbols() == []
    assert stack.count("monitor", "[SL] BOSCHLTD") == 1 and stack.count("monitor", "[SL] SBIN") == 1


async def test_broker_down_during_a_stop_loss(tmp_path: Path) -> None:
    """REST 503 while an SL fires: a 503 on the place call does not say the order was not placed, so the close is
    unconfirmed and stays closing (no blind retry); once the broker answers, its close tag shows no order, the
    position reopens and is closed once."""
    async with Stack(tmp_path, MONITOR_STUCK_CLOSE_S="2") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
        mark = stack.mark("monitor")

        await stack.fault("rest_down", 4)
        await stack.set_price("BOSCHLTD", 690.0)
        await stack.wait_log("monitor", "[SL] BOSCHLTD: Price ₹690.00 <= SL ₹698.25", since=mark)
        unconfirmed = await stack.wait_log("monitor", "Close of BOSCHLTD unconfirmed", since=mark)
        assert "settled with the broker by its order tag" in unconfirmed
        # The monitor notes the broker's error for /status just after that line: wait for it rather than race it.
        status = await eventually(lambda: _broker_error_noted(stack, "503"), timeout_s=5)
        failed = [e for e in status["recent_events"] if e["symbol"] == "BOSCHLTD" and e["kind"] == "close_failed"]
        assert failed and failed[0]["outcome"] == "unknown"
        listed = (await stack.api("GET", "/api/v1/positions/BOSCHLTD")).json()
        assert listed["state"] == "closing"

        await stack.wait_log("monitor", "Reconciled BOSCHLTD: no filled order carries its close tag", since=mark)
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=20)
        orders = await stack.orders("BOSCHLTD")
        assert len(orders) == 1 and orders[0]["status"] == "complete"
        closes = await stack.closes()
        assert len(closes) == 1 and closes[0]["reason"] == "stop_loss"
        assert (await stack.health())["websocket"]["connected"]  # the feed never noticed
    assert stack.count("monitor", "Position closed successfully: BOSCHLTD", since=mark) == 1


# --- small readers -------------------------------------------------------------------------------


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def _state_is(stack: Stack, symbol: str, state: PositionState) -> bool:
    return (await stack.position(symbol)).state is state


async def _broker_error_noted(stack: Stack, text: str) -> dict[str, Any] | None:
    """/status once it shows `text` in the monitor's last broker error."""
    status = await stack.status()
    return status if text in status["notes"].get("monitor.last_broker_error", "") else None


async def _muted_over(stack: Stack) -> bool:
    return "mute" not in (await stack.sim_state())["faults"]


async def _token_valid(stack: Stack) -> bool:
    return bool((await stack.status())["token"]["valid"] is True)


async def _feed_token_ok(stack: Stack, ok: bool) -> bool:
    return (await stack.feed_status()).token_ok is ok


async def _as_of_after(stack: Stack, symbol: str, epoch_s: float) -> bool:
    as_of = (await stack.price(symbol)).get("as_of")
    return as_of is not None and float(as_of) > epoch_s
