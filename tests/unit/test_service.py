from __future__ import annotations

import asyncio
import gc
import os
import signal

from libs.common.service import _until_signal, freeze_startup_heap
from libs.common.settings import Settings


async def test_sigterm_stops_a_service_even_when_its_first_cancel_is_swallowed() -> None:
    cancels = 0

    async def main(settings: Settings) -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # what asyncio.wait_for inside redis-py does on Python 3.11 when a reply races the cancel
                raise

    asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(_until_signal("test", main, Settings(_env_file=None)), timeout=5)  # type: ignore[call-arg]
    assert cancels == 2


async def test_a_main_that_returns_ends_the_service() -> None:
    async def main(settings: Settings) -> None:
        return None

    await asyncio.wait_for(_until_signal("test", main, Settings(_env_file=None)), timeout=5)  # type: ignore[call-arg]


def test_what_lives_at_start_up_is_kept_out_of_full_collections() -> None:
    started_with: list[object] = []  # a container: tracked by the collector, alive when the service has started

    def walked() -> bool:
        return any(o is started_with for o in gc.get_objects())

    assert walked()
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not walked()  # frozen: no collection walks it again
    finally:
        gc.unfreeze()
