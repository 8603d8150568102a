"""Client-side pacing: a call counts from its answer, and a call still in flight holds its slot."""

from __future__ import annotations

import asyncio
import time

from libs.common.pacing import Pacer


async def test_a_call_counts_from_its_answer_so_the_broker_never_sees_more_than_the_limit_in_a_window() -> None:
    pacer = Pacer((0.2, 2))
    started: dict[str, float] = {}
    answered: dict[str, float] = {}

    async def call(name: str, takes_s: float) -> None:
        async with pacer.slot():
            started[name] = time.monotonic()
            await asyncio.sleep(takes_s)
            answered[name] = time.monotonic()

    # Two slow calls take both slots; the third may only go 0.2 s after the first answer (not after the first start).
    await asyncio.gather(call("a", 0.3), call("b", 0.4), call("c", 0.0))
    assert started["c"] >= answered["a"] + 0.2
    assert started["a"] < answered["a"] and started["b"] < answered["a"]  # the first two went out together


async def test_calls_under_the_limit_go_at_once() -> None:
    pacer = Pacer((60.0, 3))
    before = time.monotonic()
    for _ in range(3):
        async with pacer.slot():
            pass
    assert time.monotonic() - before < 30  # far below the window: none of them waited for it
