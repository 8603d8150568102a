"""`Idempotency-Key` for the emergency close: the same key returns the first result instead of acting twice.

The key is claimed with SET NX (a short-lived "pending" marker) before anything happens, so two
concurrent requests with one key cannot both act: the second waits for the first result, or gets 409.
Only a success is remembered (for `IDEMPOTENCY_TTL_S`); a failed attempt frees the key for a retry.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from libs.common import keys

PENDING_TTL_S = 120  # a crashed request must not block its key for a day
WAIT_FOR_FIRST_S = 10.0
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Stored:
    status_code: int
    body: dict[str, Any]


class KeyInProgress(Exception):
    """Another request with the same key is still running (HTTP 409)."""


class KeyReused(Exception):
    """The key was first used for a different request (HTTP 422)."""


class Idempotency:
    """Claims, stores and replays emergency-close results by key."""

    def __init__(self, redis: Redis, ttl_s: int, *, wait_s: float = WAIT_FOR_FIRST_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._wait_s = wait_s

    async def begin(self, key: str, fingerprint: str) -> Stored | None:
        """Claim `key` for this request (None: go ahead) or return the stored first result.

        Raises KeyInProgress when the first request is still running after the wait, KeyReused when
        the key was used for another request.
        """
        pending = json.dumps({"state": "pending", "fingerprint": fingerprint})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while True:
            if await self._redis.set(keys.idempotency(key), pending, nx=True, ex=PENDING_TTL_S):
                return None
            raw = await self._redis.get(keys.idempotency(key))
            if raw is None:  # the first attempt failed and freed the key: this one acts
                continue
            record = json.loads(raw)
            if record.get("fingerprint") != fingerprint:
                raise KeyReused(key)
            if record.get("state") == "done":
                return Stored(int(record["status_code"]), dict(record["body"]))
            if loop.time() > deadline:
                raise KeyInProgress(key)
            await asyncio.sleep(POLL_S)

    async def finish(self, key: str, fingerprint: str, result: Stored) -> None:
        """Remember the result of the request that claimed `key`."""
        record = {"state": "done", "fingerprint": fingerprint, "status_code": result.status_code, "body": result.body}
        await self._redis.set(keys.idempotency(key), json.dumps(record), ex=self._ttl_s)

    async def abandon(self, key: str) -> None:
        """Free `key` after a failed attempt so a retry with it acts again."""
        await self._redis.delete(keys.idempotency(key))
