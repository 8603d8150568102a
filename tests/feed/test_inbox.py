"""The bounded queue between the feed's reader and its decoder."""

from __future__ import annotations

import asyncio

from services.feed.inbox import HARD_CAP_FACTOR, Inbox


async def test_one_frame_at_a_time_while_short_then_the_whole_backlog_oldest_first() -> None:
    inbox = Inbox(max_frames=2)
    for i in range(2):
        inbox.put(b"%d" % i, float(i))
    assert await inbox.take() == [(b"0", 0.0)]
    for i in range(2, 5):
        inbox.put(b"%d" % i, float(i))
    assert [frame for frame, _ in await inbox.take()] == [b"1", b"2", b"3", b"4"]  # behind: all of it
    assert len(inbox) == 0


async def test_take_waits_for_a_frame() -> None:
    inbox = Inbox(max_frames=2)
    taking = asyncio.create_task(inbox.take())
    await asyncio.sleep(0.01)
    assert not taking.done()
    inbox.put(b"x", 1.0)
    assert await asyncio.wait_for(taking, 1) == [(b"x", 1.0)]


async def test_at_the_memory_bound_the_reader_waits_until_the_catch_up_takes_the_backlog() -> None:
    inbox = Inbox(max_frames=2)
    for i in range(2 * HARD_CAP_FACTOR):
        inbox.put(b"%d" % i, 0.0)
    assert inbox.full
    waiting = asyncio.create_task(inbox.drained())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert len(await inbox.take()) == 2 * HARD_CAP_FACTOR
    await asyncio.wait_for(waiting, 1)
    assert not inbox.full
