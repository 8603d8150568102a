from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

from libs.common.service import _until_signal, freeze_startup_heap
from libs.common.settings import Settings
from tests.helpers import REPO_ROOT, sealed_child


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


def test_a_service_process_freezes_its_start_up_heap_and_a_test_process_does_not(tmp_path: Path) -> None:
    """`supervise` in a `run_service` process freezes what start-up made (a full collection of ~100k objects
    paused the event loop 50-90 ms); called from anywhere else (a test's process) it freezes nothing."""
    probe = (
        "import asyncio, gc, os, signal, sys\n"
        "import fakeredis\n"
        "from libs.common.clock import SystemClock\n"
        "from libs.common.service import run_service, supervise\n"
        "async def main(settings):\n"
        "    async def report():\n"
        "        print('frozen', gc.get_freeze_count(), flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        await asyncio.Event().wait()\n"
        "    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)\n"
        "    await supervise('probe', {'report': report}, redis=redis, settings=settings, clock=SystemClock())\n"
        "print('before', gc.get_freeze_count(), flush=True)\n"
        "sys.exit(run_service('probe', main, description='probe', argv=[]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60, check=False,
        **sealed_child(tmp_path, PYTHONPATH=str(REPO_ROOT), LOG_DIR=str(tmp_path)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = dict(line.split() for line in done.stdout.splitlines() if line.split()[0] in ("before", "frozen"))
    assert counts["before"] == "0" and int(counts["frozen"]) > 10_000, done.stdout
    assert gc.get_freeze_count() == 0  # this test process: nothing frozen by the suite's in-process services
