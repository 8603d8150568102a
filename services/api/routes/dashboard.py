"""The dashboard: the page at `/` and the Server-Sent Events stream that keeps it live.

The page and its script and style are files shipped in this package (`services/api/dashboard/`); nothing is
built and nothing comes from elsewhere (the Content-Security-Policy says so to the browser). The stream sends
a snapshot of everything the page shows at once when a position event or a feed state change is published,
and at least every second otherwise (prices age). Pub/sub only wakes it: every snapshot is re-read from
Redis, so a lost notice costs at most a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter
from fastapi.responses import FileResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from libs.common import keys
from libs.common.models import FeedStatus, MalformedRecord
from services.api.deps import ResourcesDep
from services.api.routes.positions import closed_positions, list_positions

router = APIRouter(tags=["dashboard"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# Everything the page loads comes from the api itself.
_CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
REFRESH_S = 1.0
RECONNECT_MS = 1000  # how soon a browser retries a lost stream
_CLOSES = 10
_EVENTS = 15


async def page(request: Request) -> FileResponse:
    """The dashboard page: no data in it, so it loads without the key (its stream asks for the key when reads
    are private; the app mounts it outside the app-wide read check, like its script and style)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _CSP})


@router.get("/api/v1/dashboard/stream", response_class=EventSourceResponse, include_in_schema=False)  # endless
async def dashboard_stream(res: ResourcesDep) -> EventSourceResponse:
    """Server-Sent Events: `snapshot` (the whole dashboard state as JSON) on every change and every second;
    `unavailable` while Redis cannot be read."""
    return EventSourceResponse(updates(res), ping=15, send_timeout=10)


async def snapshot(res: ResourcesDep) -> dict[str, Any]:
    """What the dashboard shows: connection health, the feed's details, open positions, closes and events."""
    health = await res.health.read(0, None)
    raw = cast(dict[str, str], await res.redis.hgetall(keys.FEED_STATUS))
    try:
        feed = FeedStatus.from_redis(raw)
        details = {
            "resolver": feed.dns_resolver,
            "address": feed.resolved_address,
            "outage_started_at": feed.outage_started_at,
            "next_retry_at": feed.next_retry_at,
        }
    except MalformedRecord:
        details = {"resolver": "", "address": "", "outage_started_at": None, "next_retry_at": None}
    positions = await list_positions(res)
    closes = await closed_positions(res, limit=_CLOSES)
    names = [s for s in keys.SERVICES if s != "sim" or res.settings.simulator_mode]
    beats = cast(list[str | None], await res.redis.mget([keys.heartbeat(name) for name in names]))
    now = res.clock.now()
    ttl_s = res.settings.heartbeat_ttl_s
    services = {
        name: {"alive": beat is not None and now - float(beat) < ttl_s, "heartbeat_age_s": _age(now, beat)}
        for name, beat in zip(names, beats, strict=True)
    }
    return {
        "at": res.clock.now(),
        "health": health,
        "feed": details,
        "services": services,
        "positions": [p.model_dump(mode="json") for p in positions.positions],
        "closes": closes.model_dump(mode="json")["closes"],
        "events": await res.store.recent_events(_EVENTS),
        "api_key_required": bool(res.settings.api_key.get_secret_value()),
    }


def _age(now: float, beat: str | None) -> float | None:
    return None if beat is None else round(max(0.0, now - float(beat)), 1)


async def updates(res: ResourcesDep) -> AsyncIterator[ServerSentEvent]:
    """The stream's events, forever: a snapshot, then the next one when woken by a notice or after REFRESH_S."""
    while True:
        pubsub = res.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.POSITION_EVENTS_CHANNEL, keys.FEED_STATUS_CHANNEL)
            while True:
                data = json.dumps(await snapshot(res), separators=(",", ":"), default=str)
                yield ServerSentEvent(data=data, event="snapshot", retry=RECONNECT_MS)
                message = await pubsub.get_message(timeout=REFRESH_S)
                while message is not None:  # a burst of notices makes one snapshot
                    message = await pubsub.get_message(timeout=0.01)
        except RedisError as exc:
            detail = {"detail": f"Redis unreachable ({type(exc).__name__}); the guard's state is unknown"}
            yield ServerSentEvent(data=json.dumps(detail), event="unavailable", retry=RECONNECT_MS)
            await asyncio.sleep(REFRESH_S)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
