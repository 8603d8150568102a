"""The event loop every service runs on: uvloop (libuv; about 2x fewer CPU per socket read than asyncio's
selector loop in our profiles) unless `EVENT_LOOP=asyncio` asks for the standard one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from libs.common.settings import Settings


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop]:
    """What `asyncio.Runner(loop_factory=...)` builds the service's loop with."""
    if settings.event_loop == "uvloop":
        import uvloop  # only imported when chosen

        return uvloop.new_event_loop
    return asyncio.new_event_loop
