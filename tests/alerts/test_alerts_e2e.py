"""Alerts end to end: every service a real process, a real Redis, a real HTTP receiver as the apprise target."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from libs.common import keys
from libs.common.models import PositionState
from tests.alerts.receiver import Receiver
from tests.e2e.harness import Stack
from tests.ha.order_proxy import OrderProxy
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def alert_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "ALERT_URLS": json.dumps([receiver.url]),
        "ALERT_FEED_DOWN_S": "1",
        "ALERT_REPEAT_S": "5",
        "ALERT_CHECK_INTERVAL_S": "0.2",
        "ALERT_RETRY_BASE_S": "0.2",
        "ALERT_RETRY_MAX_S": "1",
        "ALERT_CLAIM_IDLE_S": "2",
        **extra,
    }


async def buy(stack: Stack, symbol: str, quantity: int) -> None:
    """The position exists at the broker first (a trade made by the bot), then the guard is told about it."""
    await stack.sim("POST", "/sim/trade", json={"symbol": symbol, "side": "buy", "quantity": quantity})


async def settled(stack: Stack) -> bool:
    """Nothing left to decide or send: no folded change waiting, no outbox message pending."""
    conditions = await stack.redis.hgetall(keys.ALERT_CONDITIONS)
    if any(json.loads(state)["pending"] for state in conditions.values()):
        return False
    pending: Any = await stack.redis.xpending(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP)
    events: Any = await stack.redis.xpending(keys.EVENTS_STREAM, keys.ALERTS_GROUP)
    return int(pending["pending"]) == 0 and int(events["pending"]) == 0


async def test_example_2_alerts_arrive_in_order_each_once(tmp_path: Path) -> None:
    """The guide's Example 2: feed down, stale, cannot monitor (with the curl), closed by api, recovered."""
    with Receiver() as receiver:
        # The guide's layers as written: no REST LTP poll (Layer 2b would keep prices fresh through the drop).
        env = alert_env(receiver, PRICE_STALE_AFTER_S="2", PRICE_CACHE_TTL_S="5", REST_POLL_INTERVAL_S="3600")
        async with Stack(tmp_path, **env) as stack:
            await stack.start("sim", "feed", "monitor", "api")
            await stack.set_price("BOSCHLTD", 720.0)
            await buy(stack, "BOSCHLTD", 10)
            await stack.open_position(
                "BOSCHLTD", "long", 10, 735.0, at_broker=False, stop_loss=698.25, take_profit=800.0
            )
            await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
            await stack.wait_connected(True)
            await stack.start("alerts")

            await stack.fault("drop", 12)
            await eventually(lambda: any("Can't monitor BOSCHLTD" in t for t in receiver.titles()), timeout_s=20)
            resp = await stack.emergency_close("BOSCHLTD", "emergency")
            assert resp.status_code == 200, resp.text
            await stack.wait_connected(True, timeout_s=30)
            await eventually(lambda: any("Feed live again" in t for t in receiver.titles()), timeout_s=15)
            await stack.wait_log("alerts", "Feed live again")
            await eventually(lambda: settled(stack), timeout_s=10)

        # A heartbeat late beyond the compressed 2 s TTL on a loaded machine is alerted too, rightly: not part of this.
        titles = [t for t in receiver.titles() if "running" not in t]
        assert titles == [
            titles[0],
            "[WARNING] 1 open position(s) on stale prices",
            "[CRITICAL] Can't monitor BOSCHLTD - no fresh prices",
            "[INFO] BOSCHLTD closed (emergency)",
            "[RECOVERED] Feed live again",
        ], titles
        assert titles[0].startswith("[WARNING] Feed down for ")
        messages = [r.message for r in receiver.delivered() if "running" not in r.title]
        assert "BOSCHLTD ₹720.00" in messages[1]["message"] and "SL ₹698.25" in messages[1]["message"]
        curl = (
            f"curl -s -X POST http://127.0.0.1:{stack.api_port}/api/v1/monitoring/emergency-close-position "
            '-H \'Content-Type: application/json\' -d \'{"symbol": "BOSCHLTD", "reason": "emergency"}\''
        )
        assert f"What to do: Close it by hand: {curl}" in messages[2]["message"]
        assert "Closed by api: 10 at ₹720.00" in messages[3]["message"] and "P&L ₹-150.00" in messages[3]["message"]
        assert [m["type"] for m in messages] == ["warning", "warning", "failure", "info", "success"]


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def test_a_failing_receiver_is_retried_and_gets_the_alerts_once_the_guard_unaffected(tmp_path: Path) -> None:
    """The receiver answers 500 while the broker is down during an SL: the guard settles the unconfirmed close (a 503
    on the place call does not prove no order was placed) and closes on its own; the outcome-unknown, reopened and
    closed alerts are retried with backoff and arrive once each, in order, when it recovers."""
    with Receiver() as receiver:
        async with Stack(tmp_path, **alert_env(receiver)) as stack:
            await stack.start("sim", "feed", "monitor", "api")
            await stack.set_price("KAYNES", 200.0)
            await buy(stack, "KAYNES", 10)
            await stack.open_position("KAYNES", "long", 10, 195.0, at_broker=False, stop_loss=190.0, take_profit=230.0)
            await eventually(lambda: _ltp_is(stack, "KAYNES", "200.00"))
            await stack.start("alerts")
            receiver.status = 500
            await stack.fault("rest_down", 2)
            await stack.set_price("KAYNES", 185.0)
            await stack.wait_log("monitor", "[SL] KAYNES: Price ₹185.00 <= SL ₹190.00")
            await stack.wait_log("monitor", "Close of KAYNES unconfirmed")
            await eventually(lambda: _closed(stack, "KAYNES"), timeout_s=15)  # the guard is not held up
            await eventually(lambda: len(receiver.requests) >= 3, timeout_s=15)  # retried with backoff
            assert receiver.delivered() == []
            await stack.wait_log("alerts", "retrying in")
            note = f"alerts.undelivered.json://127.0.0.1:{receiver.port}"
            assert "error=500" in (await stack.status())["notes"][note]  # /status tells the person
            receiver.status = 200
            await eventually(lambda: "[INFO] KAYNES closed (stop_loss)" in receiver.titles(), timeout_s=10)
            await eventually(lambda: settled(stack), timeout_s=10)
            assert receiver.titles() == [
                "[CRITICAL] Close of KAYNES: outcome unknown",
                "[WARNING] KAYNES reopened",
                "[INFO] KAYNES closed (stop_loss)",
            ]
            assert note not in (await stack.status())["notes"]
            sells = [o for o in await stack.orders("KAYNES") if o["transaction_type"] == "SELL"]
            assert len(sells) == 1  # one close, however often its alerts were retried
            unknown = receiver.delivered()[0].message["message"]
            assert "The stop_loss close order by monitor got no clear answer" in unknown and "503" in unknown
            assert "No second order is sent" in unknown
            attempts = [r.status for r in receiver.requests if "Close of KAYNES" in r.title]
            assert len(attempts) >= 3 and attempts[-1] == 200 and attempts.count(200) == 1


async def test_flapping_feed_is_folded_into_a_bounded_number_of_messages(tmp_path: Path) -> None:
    """Drops every ~2 s for ~30 s: one message per ALERT_REPEAT_S (5 s) at most, counts add up, the last one: live."""
    with Receiver() as receiver:
        async with Stack(tmp_path, **alert_env(receiver, ALERT_FEED_DOWN_S="0")) as stack:
            await stack.start("sim", "feed", "monitor", "api")
            await stack.wait_connected(True)
            await stack.start("alerts")
            started = time.monotonic()
            drops = 0
            while time.monotonic() - started < 28:
                await stack.fault("drop", 1.0)
                await eventually(lambda: _feed_down_is(stack, True), timeout_s=10)  # each change seen by alerts
                await eventually(lambda: _feed_down_is(stack, False), timeout_s=10)
                drops += 1
            flapped_s = time.monotonic() - started
            await eventually(lambda: settled(stack), timeout_s=15)
        feed = [t for t in receiver.titles() if "Feed" in t]
        assert drops >= 8
        assert 2 <= len(feed) <= flapped_s / 5 + 2, feed
        assert feed[0].startswith("[WARNING] Feed down for") and feed[-1].startswith("[RECOVERED] Feed live again")
        folded = sum(int(m.group(1)) for t in feed if (m := re.search(r"\((\d+) more changes?", t)))
        assert len(feed) + folded == 2 * drops, feed  # every down and every recovery counted once


async def test_healthcheck_pings_while_healthy_and_fail_when_a_service_dies(tmp_path: Path) -> None:
    with Receiver() as receiver, Receiver() as checks:
        env = alert_env(receiver, HEALTHCHECK_PING_URL=f"{checks.base}/ping/guard-uuid", HEALTHCHECK_PING_S="0.3")
        async with Stack(tmp_path, **env) as stack:
            await stack.start("sim", "feed", "monitor", "api", "alerts")
            await eventually(lambda: [r.path for r in checks.requests[-3:]] == ["/ping/guard-uuid"] * 3)
            stack.kill("monitor")
            await eventually(lambda: "[CRITICAL] monitor is not running" in receiver.titles(), timeout_s=15)
            await eventually(lambda: checks.requests[-1].path == "/ping/guard-uuid/fail", timeout_s=5)
            first_fail = next(i for i, r in enumerate(checks.requests) if r.path.endswith("/fail"))
            assert all(r.path.endswith("/fail") for r in checks.requests[first_fail:])
            assert checks.requests[first_fail].body == b"not running: monitor"
            await stack.start("monitor")
            await eventually(lambda: "[RECOVERED] monitor is running again" in receiver.titles(), timeout_s=15)
            await eventually(lambda: checks.requests[-1].path == "/ping/guard-uuid", timeout_s=5)
            stack.kill("alerts")  # the switch itself is gone: the pings stop, so the outside service alerts
            count = len(checks.requests)
            watch_until = time.monotonic() + 5 * 0.3  # five ping intervals
            while time.monotonic() < watch_until:
                assert len(checks.requests) <= count + 1  # at most one ping was in flight
                await asyncio.sleep(0.1)


async def _feed_down_is(stack: Stack, active: bool) -> bool:
    state = await stack.redis.hget(keys.ALERT_CONDITIONS, "feed_down")
    return state is not None and json.loads(state)["active"] is active


async def _closed(stack: Stack, symbol: str) -> bool:
    return (await stack.position(symbol)).state is PositionState.CLOSED


async def test_a_rejected_access_token_is_alerted_and_its_recovery_too(tmp_path: Path) -> None:
    with Receiver() as receiver:
        async with Stack(tmp_path, **alert_env(receiver, AUTH_RETRY_DELAY_S="1")) as stack:
            await stack.start("sim", "feed", "monitor", "api", "alerts")
            await stack.wait_connected(True)
            await stack.fault("auth", 4)
            await stack.fault("close", 0)  # the reconnection meets the rejected token
            await eventually(lambda: "[CRITICAL] Upstox rejects the access token" in receiver.titles(), timeout_s=10)
            await stack.wait_connected(True, timeout_s=20)
            await eventually(lambda: "[RECOVERED] Upstox accepts the access token again" in receiver.titles())
            await eventually(lambda: settled(stack), timeout_s=10)
        token = [r for r in receiver.delivered() if "token" in r.title]
        assert [r.title for r in token] == [
            "[CRITICAL] Upstox rejects the access token",
            "[RECOVERED] Upstox accepts the access token again",
        ]
        assert "access token rejected (HTTP 401" in token[0].message["message"]
        assert f"curl -s http://127.0.0.1:{stack.api_port}/api/v1/monitoring/status" in token[0].message["message"]


async def test_a_close_with_an_unknown_outcome_is_alerted_then_its_settlement(tmp_path: Path) -> None:
    """The broker hangs with the close order in flight: "outcome unknown" (no second order); once the broker is
    back the close is settled by its tag and the alert says so, each once."""
    with Receiver() as receiver:
        env = alert_env(receiver, BROKER_TIMEOUT_S="1", MONITOR_STUCK_CLOSE_S="4")
        async with Stack(tmp_path, **env) as stack, OrderProxy(stack.sim_port) as proxy:
            stack.env["UPSTOX_ORDER_BASE"] = proxy.url  # orders pass the proxy: the test sees them go out
            await stack.start("sim", "feed", "monitor", "api")
            await stack.set_price("BOSCHLTD", 720.0)
            await buy(stack, "BOSCHLTD", 10)
            await stack.open_position("BOSCHLTD", "long", 10, 735.0, at_broker=False, stop_loss=698.25)
            await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
            await stack.start("alerts")
            # The broker hangs once the order has gone out (not before: the close reads the positions first, and a
            # claim older than half of MONITOR_STUCK_CLOSE_S sends nothing, so a hang there is another story).
            proxy.hold()
            resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 725.0})
            assert resp.status_code == 200, resp.text
            await asyncio.wait_for(proxy.order_seen.wait(), timeout=10)
            stack.pause("sim")  # no answer comes, and nobody can ask about the order
            unknown = "[CRITICAL] Close of BOSCHLTD: outcome unknown"
            await eventually(lambda: unknown in receiver.titles(), timeout_s=15)
            stack.resume("sim")
            proxy.release()
            await eventually(lambda: "[INFO] BOSCHLTD closed (stop_loss)" in receiver.titles(), timeout_s=20)
            await eventually(lambda: settled(stack), timeout_s=10)
            sells = [o for o in await stack.orders("BOSCHLTD") if o["transaction_type"] == "SELL"]
        assert len(sells) == 1
        bosch = [r for r in receiver.delivered() if "BOSCHLTD" in r.title]
        titles = [r.title for r in bosch]
        assert "No second order is sent" in bosch[0].message["message"]
        # The broker decides: it filled the hung order (settled by its tag), or never got it (reopened, closed again).
        if len(titles) == 2:
            assert titles == [unknown, "[INFO] BOSCHLTD closed (stop_loss)"]
            assert "Closed by reconcile" in bosch[1].message["message"]
        else:
            assert titles == [unknown, "[WARNING] BOSCHLTD reopened", "[INFO] BOSCHLTD closed (stop_loss)"]
            assert "Closed by monitor" in bosch[2].message["message"]
