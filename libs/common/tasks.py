"""Stopping tasks for sure.

A cancellation can be lost on Python 3.11 when it lands while a library is finishing an await of its own
(we saw a feed task carry on after `cancel()` during a Redis call). So a task still running `grace_s`
after its cancel (time enough for its own clean-up) is cancelled again, until it ends or `patience_s`
is spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from loguru import logger

RECANCEL_EVERY_S = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, grace_s: float = 2.0, patience_s: float = 10.0
) -> None:
    """Cancel `tasks` and wait until each has ended, re-cancelling the ones that ignored it."""
    pending: set[asyncio.Task[Any]] = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    if not pending:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    _, pending = await asyncio.wait(pending, timeout=grace_s)
    while pending:
        if loop.time() > deadline:
            names = ", ".join(sorted(t.get_name() for t in pending))
            logger.error(f"Tasks still running {patience_s} s after cancel: {names}")
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)
