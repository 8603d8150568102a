"""Client-side pacing: a call counts from its answer, and a call still in flight holds its slot."""

from __future__ import annotations

import asyncio
import time

from libs.common.pacing import Pacer, in_background


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


async def test_background_calls_leave_their_share_of_the_window_to_closes() -> None:
    pacer = Pacer((0.5, 4), background_share=0.5)
    went: list[tuple[str, float]] = []
    t0 = time.monotonic()

    async def call(name: str, background: bool) -> None:
        with in_background(background):
            async with pacer.slot():
                went.append((name, time.monotonic() - t0))

    # Six background calls queue first: two go at once, the rest wait for the next windows...
    keeper = [asyncio.create_task(call(f"gtt{i}", True)) for i in range(6)]
    await asyncio.sleep(0.05)
    # ...and two closes asked for later still go at once, ahead of the queued background calls.
    await asyncio.gather(call("cancel", False), call("sell", False))
    await asyncio.gather(*keeper)
    at = dict(went)
    assert at["cancel"] < 0.2 and at["sell"] < 0.2, went
    assert sum(1 for name, t in went if name.startswith("gtt") and t < 0.45) == 2, went  # their share: 2 of 4
    assert [name for name, _ in went][:4] == ["gtt0", "gtt1", "cancel", "sell"], went


async def test_a_close_started_from_a_background_task_goes_first_again() -> None:
    pacer = Pacer((0.5, 2), background_share=0.5)
    went: list[str] = []

    async def call(name: str) -> None:
        async with pacer.slot():
            went.append(name)

    with in_background():
        await call("gtt")  # takes the background share of this window
        waiting = asyncio.create_task(call("gtt-next"))  # waits for the next window
        await asyncio.sleep(0.05)
        with in_background(False):
            await call("close")  # the closes' slot is still free
    await waiting
    assert went == ["gtt", "close", "gtt-next"]
