"""The guide's three scenario examples, every service a real process, faults injected from outside.

Time is compressed through settings (harness.FAST: backoff 0.5-1.0 s instead of 5-10 s, ...); the
assertions are on what the guide shows a person: connection-health answers, log lines, Redis state and
the orders the broker (the simulator) received.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from libs.common import keys
from libs.common.models import PositionState
from tests.e2e.harness import FAST, Stack
from tests.helpers import eventually, free_port

pytestmark = pytest.mark.e2e

_LAYERS = ("fresh", "stale", "expired")
NO_REST_POLL = "3600"  # an hour: no REST LTP poll within a test
WAITING = re.compile(r"^\[VERBOSE\] Waiting (\d+\.\d) seconds before retry \(with jitter\)\.\.\.$")


def _index(lines: list[str], text: str, start: int = 0) -> int:
    return next(i for i, line in enumerate(lines) if i >= start and text in line)


async def _link_lived(stack: Stack, for_s: float) -> dict[str, Any]:
    """Health once one link has been live for `for_s` (no drop in between): only a link that lived past the base
    delay earns an at-once first attempt, and a loaded machine can be slow to connect or drop a link on its own."""

    async def lived() -> dict[str, Any] | None:
        first = await stack.wait_connected(True)
        await asyncio.sleep(for_s)
        now = await stack.health()
        same_link = now["websocket"]["network_errors"] == first["websocket"]["network_errors"]
        return now if now["websocket"]["connected"] and same_link else None

    return await eventually(lived, timeout_s=30)


async def test_example_1_brief_disconnection(tmp_path: Path) -> None:
    """Feed drops and comes back with jittered backoff; KAYNES hits TP on a cached price during the gap, once."""
    # The guide's layers as written: no REST LTP poll (Layer 2b would keep prices fresh through a WebSocket drop).
    async with Stack(tmp_path, REST_POLL_INTERVAL_S=NO_REST_POLL) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("KAYNES", 204.10)
        await stack.open_position("KAYNES", "long", 10, 190.0, stop_loss=180.0, take_profit=210.0)
        await eventually(lambda: _ltp_is(stack, "KAYNES", "204.10"))
        before = await _link_lived(stack, float(FAST["RECONNECT_BASE_DELAY_S"]))
        subscribed = before["websocket"]["subscribed_symbols"]
        assert subscribed >= 200 and before["websocket"]["reconnect_attempts"] == 0
        feed_mark, monitor_mark = stack.mark("feed"), stack.mark("monitor")

        await stack.fault("drop", 6)
        down = await stack.wait_connected(False, timeout_s=10)
        assert down["advice_branch"] == "fresh_cache"
        first_age = await _age(stack, "BOSCHLTD")
        await eventually(lambda: _age_at_least(stack, "BOSCHLTD", first_age + 2), timeout_s=10)  # ages grow

        # During the gap the trader moves the target under the cached price: Layer 2 closes on it.
        resp = await stack.api("PATCH", "/api/v1/positions/KAYNES", json={"take_profit": 197.76})
        assert resp.status_code == 200, resp.text
        tp_line = "[TP] KAYNES: Price ₹204.10 >= TP ₹197.76 (FALLBACK)"
        await stack.wait_log("monitor", tp_line, since=monitor_mark)
        await eventually(lambda: _state_is(stack, "KAYNES", PositionState.CLOSED), timeout_s=10)
        assert not (await stack.health())["websocket"]["connected"]  # closed while the feed was still down

        after = await stack.wait_connected(True, timeout_s=30)
        await eventually(lambda: _age_at_most(stack, "BOSCHLTD", 1), timeout_s=10)  # ages reset
        after = await stack.health()
        assert after["websocket"]["subscribed_symbols"] == subscribed  # subscriptions restored
        assert after["websocket"]["reconnect_attempts"] == 0 and after["websocket"]["network_errors"] >= 1
        await eventually(lambda: _branch_is(stack, "live"), timeout_s=10)  # "fallback" for a moment after
        state = await stack.sim_state()
        assert sum(sum(c["subscriptions"].values()) for c in state["connections"]) == subscribed

        # Exactly once: one order at the broker, one close in the journal, a second close is refused.
        orders = await stack.orders("KAYNES")
        assert len(orders) == 1 and orders[0]["tag"].startswith("guard-close-"), orders
        assert orders[0]["transaction_type"] == "SELL" and orders[0]["status"] == "complete"
        closes = [c for c in await stack.closes() if c["symbol"] == "KAYNES"]
        assert len(closes) == 1 and closes[0]["reason"] == "take_profit" and closes[0]["price_source"] == "cached"
        assert (await stack.emergency_close("KAYNES")).status_code == 409
        assert len(await stack.orders("KAYNES")) == 1

    monitor = stack.lines("monitor", monitor_mark)
    fallback = _index(monitor, "[FALLBACK] Using cached price for KAYNES: ₹204.10 (")
    assert re.search(r"\((\d+)s old\)$", monitor[fallback])
    assert fallback < _index(monitor, tp_line) < _index(monitor, "Position closed successfully: KAYNES")
    assert stack.count("monitor", "[TP] KAYNES") == 1

    feed = stack.lines("feed", feed_mark)
    closed = _index(feed, "[WARNING] WebSocket connection closed")
    assert feed[closed + 1] == "[VERBOSE] Reason: connection lost (no close frame)"
    assert feed[closed + 2] == "[VERBOSE] Reconnecting (attempt 1/10)..."
    assert WAITING.match(feed[closed + 3])
    assert feed[closed + 4] == "[VERBOSE] Attempting reconnection..."
    assert "[SUCCESS] Reconnection successful!" in feed
    delays = [float(m.group(1)) for line in feed if (m := WAITING.match(line))]
    assert delays[0] == 0.0, delays  # the link had lived: attempt 1 at once
    assert all(d <= 0.05 for d in delays[1:5]), delays  # four quick ones, a 20th to a 10th of the base apart
    assert len(delays) >= 7 and all(0.5 <= d <= 1.0 for d in delays[5:]), delays  # then within [base, cap]
    assert len(set(delays[5:])) >= 2, delays  # jitter: not one fixed delay
    # The close happened during the gap: before the feed's reconnection (both logs share the clock).
    tp_at = next(t for t, line in stack.timed("monitor", monitor_mark) if tp_line in line)
    back_at = next(t for t, line in stack.timed("feed", feed_mark) if "Reconnection successful" in line)
    assert tp_at < back_at


async def test_example_2_extended_outage(tmp_path: Path) -> None:
    """Prices age fresh -> stale -> expired; the monitor says it cannot monitor once; a person closes by hand."""
    async with Stack(
        tmp_path,
        PRICE_STALE_AFTER_S="2",
        PRICE_CACHE_TTL_S="5",
        MONITOR_FALLBACK_LOG_INTERVAL_S="1",
        REST_POLL_INTERVAL_S=NO_REST_POLL,  # the guide's layers as written (see example 1)
    ) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.set_price("KAYNES", 200.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25, take_profit=800.0)
        await stack.open_position("KAYNES", "long", 10, 195.0, stop_loss=190.0, take_profit=230.0)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
        await eventually(lambda: _ltp_is(stack, "KAYNES", "200.00"))
        await stack.wait_connected(True)
        pids = {name: stack.pid(name) for name in ("feed", "monitor", "api")}
        feed_mark, monitor_mark = stack.mark("feed"), stack.mark("monitor")

        await stack.fault("drop", 14)
        seen: list[tuple[str, str]] = []

        async def expired() -> bool:
            health = await stack.health(symbols="BOSCHLTD")
            if health["websocket"]["connected"]:
                return False
            # The advice follows the oldest open position's price; both symbols keep trading until the drop, so
            # their last ticks (and ages) may differ by a moment.
            entries = health["price_cache"]["cache_entries"]
            statuses = sorted((entries[s]["status"] for s in ("BOSCHLTD", "KAYNES")), key=_LAYERS.index)
            if not seen or seen[-1] != (statuses[-1], health["advice_branch"]):
                seen.append((statuses[-1], health["advice_branch"]))
            return statuses[0] == "expired"

        await eventually(expired, timeout_s=15, interval_s=0.1)
        assert seen == [("fresh", "fresh_cache"), ("stale", "stale_cache"), ("expired", "expired")], seen
        health = await stack.health(symbols="BOSCHLTD")
        entry = health["price_cache"]["cache_entries"]["BOSCHLTD"]
        assert entry["price"] is None and entry["is_stale"] is True and entry["has_open_position"] is True
        assert "manually close" in health["advice"] and "emergency API" in health["advice"]
        assert health["price_cache"]["open_positions"]["expired"] == 2

        await stack.wait_log("monitor", "[WARNING] Can't monitor BOSCHLTD - no fresh prices", since=monitor_mark)
        # The hash expires PRICE_CACHE_TTL_S after its last write (a vouch writes a little after `as_of`).
        await eventually(lambda: _gone(stack, keys.price("BOSCHLTD")), timeout_s=5)
        # The monitor logs that line, then records it on the position: wait for the record rather than race it.
        await eventually(lambda: _unmonitored_is(stack, "BOSCHLTD", True), timeout_s=5)

        # Layer 3: the person closes it through the emergency API; the broker fills at the last price.
        resp = await stack.emergency_close("BOSCHLTD", "emergency")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert {k: body[k] for k in ("status", "symbol", "entry_price", "exit_price", "pnl", "reason", "message")} == {
            "status": "success",
            "symbol": "BOSCHLTD",
            "entry_price": 735.0,
            "exit_price": 720.0,
            "pnl": -150.0,
            "reason": "emergency",
            "message": "Position BOSCHLTD closed successfully",
        }
        assert (await stack.emergency_close("BOSCHLTD", "emergency")).status_code == 409
        assert not (await stack.health())["websocket"]["connected"]  # all of this during the outage

        # The network returns: everything recovers without a restart, and protection is live again.
        await stack.wait_connected(True, timeout_s=30)
        await stack.wait_log("monitor", "Monitoring KAYNES again", since=monitor_mark, timeout_s=10)
        await eventually(lambda: _unmonitored_is(stack, "KAYNES", False), timeout_s=10)
        await eventually(lambda: _branch_is(stack, "live"), timeout_s=10)
        await stack.set_price("KAYNES", 185.0)
        await stack.wait_log("monitor", "[SL] KAYNES: Price ₹185.00 <= SL ₹190.00", since=monitor_mark)
        await eventually(lambda: _state_is(stack, "KAYNES", PositionState.CLOSED), timeout_s=10)
        assert {name: stack.pid(name) for name in pids} == pids and all(stack.alive(n) for n in pids)
        assert len(await stack.orders("BOSCHLTD")) == 1 and len(await stack.orders("KAYNES")) == 1

    monitor = stack.lines("monitor", monitor_mark)
    stale = re.compile(r"\[FALLBACK\] Using stale price for BOSCHLTD: ₹720\.00 \([2-4]s old\)")
    assert any(stale.fullmatch(line) for line in monitor)
    expiry = _index(monitor, "[FALLBACK] Price cache expired for BOSCHLTD")
    assert monitor[expiry + 1] == "[WARNING] Can't monitor BOSCHLTD - no fresh prices"
    assert stack.count("monitor", "Can't monitor BOSCHLTD") == 1
    assert stack.count("monitor", "Can't monitor KAYNES") == 1
    assert not any("(FALLBACK)" in line and "KAYNES" in line for line in monitor)  # it was never triggered blind
    feed = stack.lines("feed", feed_mark)
    assert feed.count("[ERROR] Reconnection failed") >= 3  # kept trying through the outage
    assert "[SUCCESS] Reconnection successful!" in feed


async def test_example_3_dns_failure(tmp_path: Path) -> None:
    """The system resolver cannot resolve the API host; the fallback resolver answers; TLS is verified by name."""
    dns_port = free_port()
    ca = tmp_path / "sim-ca.pem"
    host = "api.upstox.invalid"  # `.invalid` never resolves through the system resolver
    async with Stack(
        tmp_path, SIM_TLS="true", SIM_DNS_PORT=str(dns_port), SIM_TLS_CA_PATH=str(ca), TLS_CA_FILE=str(ca)
    ) as stack:
        await stack.start("sim")
        feed_env = {
            "UPSTOX_API_BASE": f"https://{host}:{stack.sim_port}",
            "DNS_FALLBACK_SERVERS": '["127.0.0.1"]',
            "DNS_PORT": str(dns_port),
        }
        # Control: the same feed without the simulator's CA in its trust store refuses the certificate.
        await stack.start("feed", env={**feed_env, "TLS_CA_FILE": ""})
        await stack.wait_log("feed", "CERTIFICATE_VERIFY_FAILED", timeout_s=20)
        assert not (await stack.feed_status()).connected
        stack.stop("feed")

        mark = stack.mark("feed")
        await stack.start("feed", env={"TLS_CA_FILE": str(ca)})
        await stack.start("monitor", "api")
        health = await stack.wait_connected(True)
        assert health["websocket"]["subscribed_symbols"] >= 200
        status = await stack.feed_status()
        assert (status.dns_resolver, status.resolved_address) == ("127.0.0.1", "127.0.0.1")
        await stack.set_price("BOSCHLTD", 700.0)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "700.00"))

        dns = [line for line in stack.lines("feed", mark) if line.startswith("[DNS]")]
        assert dns[:3] == [
            dns[0],
            "[DNS] Trying 127.0.0.1...",
            f"[DNS] ✅ Resolved {host} → 127.0.0.1 (via 127.0.0.1)",
        ], dns
        assert dns[0].startswith("[DNS] ⚠️ System DNS failed: ")
        feed = stack.lines("feed", mark)
        assert _index(feed, "[DNS] ✅ Resolved") < _index(feed, "[SUCCESS] WebSocket connection established!")

        # A drop: reconnection goes through the fallback resolver and its periodic DNS health check.
        mark = stack.mark("feed")
        await stack.fault("drop", 8)
        await stack.wait_connected(False, timeout_s=10)
        await stack.wait_connected(True, timeout_s=30)
        feed = stack.lines("feed", mark)
        assert "[VERBOSE] Attempting reconnection with fallback DNS..." in feed
        assert "[DNS] Checking DNS health..." in feed  # every 3rd attempt
        assert "[SUCCESS] Reconnection successful!" in feed
        assert "[SUCCESS] WebSocket connection established!" in feed


# --- small readers -------------------------------------------------------------------------------


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def _state_is(stack: Stack, symbol: str, state: PositionState) -> bool:
    return (await stack.position(symbol)).state is state


async def _age(stack: Stack, symbol: str) -> int:
    entry = (await stack.health(symbols=symbol))["price_cache"]["cache_entries"][symbol]
    return int(entry["age_seconds"])


async def _age_at_least(stack: Stack, symbol: str, age_s: int) -> bool:
    return await _age(stack, symbol) >= age_s


async def _age_at_most(stack: Stack, symbol: str, age_s: int) -> bool:
    return await _age(stack, symbol) <= age_s


async def _gone(stack: Stack, key: str) -> bool:
    return await stack.redis.exists(key) == 0


async def _unmonitored_is(stack: Stack, symbol: str, unmonitored: bool) -> bool:
    return ((await stack.position(symbol)).unmonitored_since is not None) is unmonitored


async def _branch_is(stack: Stack, branch: str) -> bool:
    return bool((await stack.health())["advice_branch"] == branch)
