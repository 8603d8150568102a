"""`python -m services.monitor` as a real process: a stale cached price below SL closes the position."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from libs.common.clock import SystemClock
from libs.common.models import PositionState
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.helpers import ChildPlace, eventually, sealed_child
from tests.monitor.conftest import long_bosch, set_feed, write_price

pytestmark = pytest.mark.e2e
CLOCK = SystemClock()


def _place(settings: Settings, cwd: Path, **extra: str) -> ChildPlace:
    return sealed_child(
        cwd,
        REDIS_URL=settings.redis_url,
        BROKER="paper",
        MONITOR_SWEEP_INTERVAL_S="0.1",
        HEARTBEAT_INTERVAL_S="0.2",
        HEARTBEAT_TTL_S="2",
        **extra,
    )


async def _check(settings: Settings, cwd: Path) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.monitor", "--check", **_place(settings, cwd)
    )
    return await asyncio.wait_for(proc.wait(), 20)


async def test_the_service_closes_on_a_stale_price_and_reports_healthy(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    assert await _check(settings, tmp_path) == 1  # not running yet: no heartbeat
    store = PositionStore(redis, CLOCK)
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "575.00", CLOCK.now() - 45)
    await set_feed(redis, settings, CLOCK, live=False)
    log_dir = tmp_path / "logs"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.monitor",
        **_place(settings, tmp_path, LOG_DIR=str(log_dir)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:

        async def closed() -> bool:
            position = await store.get("BOSCHLTD")
            return position is not None and position.state is PositionState.CLOSED

        await eventually(closed, timeout_s=15)

        async def healthy() -> bool:
            return await _check(settings, tmp_path) == 0

        await eventually(healthy, timeout_s=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        raw, _ = await asyncio.wait_for(proc.communicate(), 20)
    out = raw.decode()
    assert proc.returncode == 0, out
    text = (log_dir / "monitor.log").read_text(encoding="utf-8")
    assert text == out
    # The process takes a moment to start: the price is 45 s old or a little more when it acts.
    assert re.search(r"\[FALLBACK\] Using stale price for BOSCHLTD: ₹575\.00 \(4[5-9]s old\) \| monitor:monitor", text)
    for expected in (
        "[SL] BOSCHLTD: Price ₹575.00 <= SL ₹698.25 (FALLBACK) | monitor:monitor",
        "[SUCCESS] Position closed successfully: BOSCHLTD exit ₹575.00 pnl ₹-6240.00 (order paper-1)",
        "[INFO] monitor stopped",
    ):
        assert expected in text, text
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if tag in line) for tag in ("[FALLBACK]", "[SL]", "[SUCCESS]")]
    assert order == sorted(order)
