"""`python -m services.feed` as a real process against `python -m services.sim`, a private Redis and SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common import keys
from libs.common.models import FeedState
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def test_feed_process_writes_ticks_passes_check_and_stops_cleanly(tmp_path: Path) -> None:
    async with Stack(tmp_path) as stack:
        await stack.start("sim", "feed")
        await stack.wait_log("feed", "[SUCCESS] WebSocket connection established!")

        async def bosch() -> dict[str, str]:
            return await stack.redis.hgetall(keys.price("BOSCHLTD"))

        row = await eventually(bosch, timeout_s=10)
        assert row["instrument_key"] == "NSE_EQ|INE323A01026" and float(row["ltp"]) > 0
        assert await stack.redis.ttl(keys.price("BOSCHLTD")) > 0
        assert (await stack.feed_status()).connected
        assert stack.check("feed") == 0

        stack.stop("feed")  # SIGTERM
        assert (await stack.feed_status()).state is FeedState.CLOSED
        log = stack.log("feed") or stack.output("feed")
        assert "feed stopped" in log
        assert "| feed:websocket" in log  # the guide's `grep websocket` finds the connection lines
        assert "Traceback" not in log
