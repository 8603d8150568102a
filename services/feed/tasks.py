"""Stopping tasks for sure.

A cancellation can be lost on Python 3.11 when it lands while a library is finishing an await of its own
(we saw a feed task carry on after `cancel()` during a Redis call). So a task that is still running after
a cancel is cancelled again, until it ends or `patience_s` is spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from loguru import logger

RECANCEL_EVERY_S = 0.2


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], patience_s: float = 5.0) -> None:
    """Cancel `tasks` and wait until each has ended, re-cancelling the ones that ignored it."""
    pending: set[asyncio.Task[Any]] = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)
        if pending and loop.time() > deadline:
            names = ", ".join(sorted(t.get_name() for t in pending))
            logger.error(f"Tasks still running {patience_s} s after cancel: {names}")
            return
