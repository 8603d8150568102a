"""Two alerts instances share one consumer group: an event is sent once, even when the instance sending it dies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.alerts.test_alerts_e2e import alert_env, settled
from tests.ha.harness import HAStack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

CLOSED = "[INFO] BOSCHLTD closed (emergency)"


async def test_an_alerts_instance_killed_mid_delivery_the_other_sends_its_alert_exactly_once(tmp_path: Path) -> None:
    """Alerts b is held, so a reads the close event and sends it; the receiver fails it, so a holds it unacknowledged
    (retrying). Then a is SIGKILLed and b comes back: b takes the message over and it arrives once."""
    with Receiver() as receiver:
        async with HAStack(tmp_path, **alert_env(receiver)) as stack:
            await stack.start("sim")
            await stack.start_instances(("feed", "a"), ("monitor", "a"), ("api", "a"), ("alerts", "a"), ("alerts", "b"))
            await stack.set_price("BOSCHLTD", 720.0)
            await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
            await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"), timeout_s=10)

            stack.pause("alerts@b")
            receiver.status = 500
            resp = await stack.emergency_close("BOSCHLTD")
            assert resp.status_code == 200, resp.text
            await eventually(lambda: _attempts(receiver) != [], timeout_s=15)  # a has it and is sending it
            stack.kill("alerts@a")
            receiver.status = 200
            stack.resume("alerts@b")

            await eventually(lambda: CLOSED in receiver.titles(), timeout_s=20)
            await eventually(lambda: settled(stack), timeout_s=10)  # nothing left pending: no later resend
        assert [t for t in receiver.titles() if "BOSCHLTD" in t] == [CLOSED]
        attempts = _attempts(receiver)
        assert attempts[0] == 500 and attempts.count(200) == 1, attempts  # a only ever failed; b sent it once


def _attempts(receiver: Receiver) -> list[int]:
    return [r.status for r in receiver.requests if r.title == CLOSED]


async def _ltp_is(stack: HAStack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp
