"""Delivery guarantees of `python -m services.alerts` (real processes, real Redis, a real HTTP receiver):
an alert is neither lost when the service dies before acknowledging it nor sent twice by two instances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libs.common import keys
from libs.common.events import add_event, encode_event
from tests.alerts.receiver import Receiver
from tests.alerts.test_alerts_e2e import alert_env, settled
from tests.e2e.harness import Stack
from tests.helpers import eventually, terminate

pytestmark = pytest.mark.e2e


async def closed_event(stack: Stack, symbol: str, pnl: float = -150.0) -> None:
    """A close as the monitor records it (the alerts service only reads the stream)."""
    record = {
        "symbol": symbol, "instrument_key": f"NSE_EQ|{symbol}", "side": "long", "quantity": 10,
        "entry_price": 735.0, "exit_price": 720.0, "pnl": pnl, "reason": "stop_loss", "closed_at": 1.0,
        "order_id": f"SIM-{symbol}", "price_source": "stale", "price_age_s": 45.0, "closed_by": "monitor",
    }  # fmt: skip
    await add_event(stack.redis, encode_event("closed", 1.0, symbol, record=record))


async def test_killed_between_sending_and_acknowledging_the_alert_is_sent_after_restart_once(tmp_path: Path) -> None:
    with Receiver() as receiver:
        async with Stack(tmp_path, **alert_env(receiver)) as stack:
            await stack.start("alerts")
            receiver.hold()  # the send reaches the receiver and waits for an answer that never comes
            await closed_event(stack, "BOSCHLTD")
            await eventually(lambda: receiver.held == 1, timeout_s=10)
            stack.kill("alerts")  # SIGKILL: read, sent, not acknowledged
            receiver.release()
            await closed_event(stack, "KAYNES")  # recorded while no alerts service runs
            assert receiver.delivered() == []

            await stack.start("alerts")
            await eventually(lambda: "[INFO] BOSCHLTD closed (stop_loss)" in receiver.titles(), timeout_s=15)
            await eventually(lambda: "[INFO] KAYNES closed (stop_loss)" in receiver.titles(), timeout_s=5)
            await eventually(lambda: settled(stack), timeout_s=10)
            assert receiver.titles().count("[INFO] BOSCHLTD closed (stop_loss)") == 1
            assert receiver.titles().count("[INFO] KAYNES closed (stop_loss)") == 1
            # The dead process's consumer, holding nothing any more, is forgotten.
            await eventually(lambda: _consumers(stack, keys.ALERTS_OUTBOX, 1), timeout_s=10)
            message = next(r for r in receiver.delivered() if "BOSCHLTD" in r.title).message["message"]
            assert "Closed by monitor: 10 at ₹720.00 (stale price, 45 s old)" in message
            assert "P&L ₹-150.00" in message


async def test_two_instances_send_every_alert_once(tmp_path: Path) -> None:
    with Receiver() as receiver:
        async with Stack(tmp_path, **alert_env(receiver, HEARTBEAT_TTL_S="1")) as stack:
            await stack.start("alerts")
            second = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
                [sys.executable, "-m", "services.alerts"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **stack.place_of("alerts"),
            )  # fmt: skip
            try:
                symbols = [f"SYM{i:02d}" for i in range(20)]
                for symbol in symbols:
                    await closed_event(stack, symbol)
                # Conditions both instances derive on their timers: no service beats in this test.
                lost = [f"[CRITICAL] {name} is not running" for name in ("sim", "feed", "monitor", "api")]
                expected = {f"[INFO] {s} closed (stop_loss)" for s in symbols} | set(lost)

                def all_arrived() -> bool:
                    titles = set(receiver.titles())
                    return expected <= titles and any(t.startswith("[WARNING] Feed down for ") for t in titles)

                await eventually(all_arrived, timeout_s=20)
                await eventually(lambda: settled(stack), timeout_s=10)
                consumers = await stack.redis.xinfo_consumers(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP)
                assert len(consumers) == 2
            finally:
                terminate(second)
        titles = receiver.titles()
        feed_down = [t for t in titles if t.startswith("[WARNING] Feed down for ")]
        assert len(feed_down) == 1, titles
        assert sorted(t for t in titles if t not in feed_down) == sorted(expected), titles


async def _consumers(stack: Stack, stream: str, count: int) -> bool:
    return len(await stack.redis.xinfo_consumers(stream, keys.ALERTS_GROUP)) == count


async def test_alerts_survive_a_redis_restart(tmp_path: Path) -> None:
    with Receiver() as receiver:
        async with Stack(tmp_path, **alert_env(receiver)) as stack:
            await stack.start("alerts")
            await closed_event(stack, "BOSCHLTD")
            await eventually(lambda: "[INFO] BOSCHLTD closed (stop_loss)" in receiver.titles(), timeout_s=10)
            pid = stack.pid("alerts")
            await stack.restart_redis()  # AOF keeps the streams, their groups and the condition states
            await closed_event(stack, "KAYNES")
            await eventually(lambda: "[INFO] KAYNES closed (stop_loss)" in receiver.titles(), timeout_s=20)
            await eventually(lambda: settled(stack), timeout_s=10)
            assert stack.pid("alerts") == pid and stack.alive("alerts")
        closes = [t for t in receiver.titles() if "closed" in t]
        assert closes == ["[INFO] BOSCHLTD closed (stop_loss)", "[INFO] KAYNES closed (stop_loss)"]
