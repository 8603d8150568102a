"""The `events` stream: one JSON entry per thing that happened and may matter to a person.

Every service writes its events here (positions, closes, feed state changes, ...); the alerts service reads
them through a consumer group, so an event recorded while it is down is still alerted when it returns.
An entry is ``{"event": JSON}`` with at least ``kind``, ``symbol`` ("" when none) and ``at`` (epoch s).
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from libs.common import keys

EVENTS_MAXLEN = 10_000


def encode_event(kind: str, at: float, symbol: str = "", **data: Any) -> str:
    """The JSON payload of one event (compact; values JSON cannot hold become strings)."""
    event = {"kind": kind, "symbol": symbol, "at": at, **data}
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def add_event(pipe: Pipeline | Redis, payload: str) -> Any:
    """Append an encoded event to the stream (capped at about `EVENTS_MAXLEN` entries)."""
    return pipe.xadd(keys.EVENTS_STREAM, {"event": payload}, maxlen=EVENTS_MAXLEN, approximate=True)


def decode_event(fields: dict[str, str]) -> dict[str, Any]:
    """The event of one stream entry. Raises ValueError when it is not a JSON object with a `kind`."""
    event = orjson.loads(fields.get("event", ""))  # orjson.JSONDecodeError is a ValueError
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        raise ValueError("not an event")
    return event
