"""Positions in Redis and the one atomic claim that makes every close happen at most once.

A position lives in `position:SYMBOL`; its state moves open -> closing -> closed only through the
scripts below, each of which checks the state (and the claim id) inside Redis. The monitor and the
API both close through `libs.common.closing`, which uses these; nobody writes the state directly.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import Clock
from libs.common.events import add_event, decode_event, encode_event
from libs.common.models import CloseReason, CloseRecord, MalformedRecord, Position, PositionState

# KEYS: position, open set, subscriptions hash. ARGV: symbol, instrument_key, then field/value pairs.
# A resent call of our own (same opened_at) answers 'ok' again.
_OPEN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'open' or state == 'closing' then
  for i = 3, #ARGV, 2 do
    if ARGV[i] == 'opened_at' and state == 'open' and redis.call('HGET', KEYS[1], 'opened_at') == ARGV[i + 1] then
      return 'ok'
    end
  end
  return state
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 'ok'
"""

# Every script below is idempotent per claim id: redis-py resends a script whose reply timed out, and a second
# run of one that already took effect must answer as the first did.

# KEYS: position. ARGV: claim_id, claimed_at, reason. Returns 'ok' or the state that refused the claim.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'closing' and redis.call('HGET', KEYS[1], 'claim_id') == ARGV[1] then return 'ok' end
if state ~= 'open' then return state end
redis.call('HSET', KEYS[1], 'state', 'closing', 'claim_id', ARGV[1], 'claimed_at', ARGV[2], 'close_reason', ARGV[3])
return 'ok'
"""

# KEYS: position. ARGV: claim_id, error, next_attempt_at, quantity ('' = unchanged). Reopens a position whose
# close failed (with the quantity still held when part of it was sold).
_RELEASE = """
if redis.call('HGET', KEYS[1], 'released_claim') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'open' then
  return 1
end
if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'closing' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'open', 'claim_id', '', 'claimed_at', '', 'last_error', ARGV[2],
           'next_attempt_at', ARGV[3], 'released_claim', ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'quantity', ARGV[4]) end
redis.call('HINCRBY', KEYS[1], 'close_attempts', 1)
return 1
"""

# KEYS: position, open set, journal, subscriptions hash. ARGV: claim_id, symbol, record JSON.
_COMPLETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] then return 0 end
if state == 'closed' then return 1 end
if state ~= 'closing' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'closed', 'last_error', '', 'next_attempt_at', '')
redis.call('HINCRBY', KEYS[1], 'close_attempts', 1)
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
"""

# KEYS: position. ARGV: quantity. Lowers the guarded quantity of an open position (the broker holds less).
_REDUCE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return state or 'missing' end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1])
return 'ok'
"""

# KEYS: position, open set, subscriptions hash. ARGV: symbol. Stops guarding an open position (no order).
_REMOVE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return state or 'missing' end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 'ok'
"""

# KEYS: position. ARGV: field/value pairs. Changes SL/TP only while the position is open.
_UPDATE_LEVELS = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return state or 'missing' end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 'ok'
"""


# KEYS: position. ARGV: epoch s the monitor lost its prices, or '' when they came back. Open positions only.
_MARK_UNMONITORED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'unmonitored_since', ARGV[1])
return 1
"""


def new_claim_id() -> str:
    """A fresh claim id (16 hex characters: the close tag stays within Upstox's 40)."""
    return uuid.uuid4().hex[:16]


class PositionConflict(Exception):
    """The position is not in a state that allows the operation (HTTP 409). `state` says which it is in."""

    def __init__(self, symbol: str, state: str) -> None:
        super().__init__(f"position {symbol} is {state}")
        self.symbol = symbol
        self.state = state


class PositionNotFound(Exception):
    """There is no position on the symbol (HTTP 404)."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"no open position for {symbol}")
        self.symbol = symbol


class PositionStore:
    """Reads and changes positions; every state change is one atomic script call."""

    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock
        self._open = redis.register_script(_OPEN)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._complete = redis.register_script(_COMPLETE)
        self._update_levels = redis.register_script(_UPDATE_LEVELS)
        self._mark_unmonitored = redis.register_script(_MARK_UNMONITORED)
        self._reduce = redis.register_script(_REDUCE)
        self._remove = redis.register_script(_REMOVE)

    async def open(self, position: Position) -> Position:
        """Register an open position and ask the feed to subscribe its symbol.

        Raises PositionConflict when the symbol already has an open or closing position.
        """
        fields = [item for pair in position.to_redis().items() for item in pair]
        result = await self._open(
            keys=[keys.position(position.symbol), keys.OPEN_POSITIONS, keys.FEED_SUBSCRIPTIONS],
            args=[position.symbol, position.instrument_key, *fields],
        )
        if result != "ok":
            raise PositionConflict(position.symbol, str(result))
        await self._redis.publish(
            keys.SUBSCRIPTION_REQUESTS_CHANNEL, f"sub {position.symbol} {position.instrument_key}"
        )
        await self.publish_event("opened", position.symbol, position=position.public())
        return position

    async def get(self, symbol: str) -> Position | None:
        """The position on `symbol` in any state, None if there never was one. Raises MalformedRecord."""
        data = cast(dict[str, str], await self._redis.hgetall(keys.position(symbol)))
        return Position.from_redis(data) if data else None

    async def open_symbols(self) -> list[str]:
        """Symbols whose position is open or closing."""
        return sorted(str(s) for s in await self._redis.smembers(keys.OPEN_POSITIONS))

    async def list_open(self) -> list[Position | MalformedRecord]:
        """Every open or closing position, read in one pipeline; corrupt records come back as MalformedRecord."""
        symbols = await self.open_symbols()
        return await self.read_many(symbols)

    async def read_many(self, symbols: Sequence[str]) -> list[Position | MalformedRecord]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hgetall(keys.position(symbol))
            rows = await pipe.execute()
        out: list[Position | MalformedRecord] = []
        for symbol, row in zip(symbols, rows, strict=True):
            try:
                out.append(Position.from_redis(row or {"symbol": symbol}))
            except MalformedRecord as exc:
                out.append(exc)
        return out

    async def update_levels(self, symbol: str, stop_loss: int | None, take_profit: int | None) -> Position:
        """Move SL and/or TP (paise) of an open position; validated against its side and entry first."""
        current = await self.get(symbol)
        if current is None:
            raise PositionNotFound(symbol)
        changes: dict[str, Any] = {}
        if stop_loss is not None:
            changes["stop_loss"] = stop_loss
        if take_profit is not None:
            changes["take_profit"] = take_profit
        updated = Position.model_validate({**current.model_dump(), **changes})
        data = updated.to_redis()
        fields = [item for name in changes for item in (name, data[name])]
        result = await self._update_levels(keys=[keys.position(symbol)], args=fields)
        if result != "ok":
            raise PositionConflict(symbol, str(result))
        await self.publish_event(
            "levels_changed", symbol, stop_loss=data.get("stop_loss"), take_profit=data.get("take_profit")
        )
        return updated

    async def claim(self, symbol: str, reason: CloseReason, claim_id: str | None = None) -> tuple[str, Position]:
        """Atomically move `symbol` from open to closing; only the holder of the returned claim id may finish it.
        A repeated claim with the same `claim_id` (a retried call) answers as the first did.

        Raises PositionNotFound (no position) or PositionConflict (already closing or closed).
        """
        claim_id = claim_id or new_claim_id()
        result = await self._claim(keys=[keys.position(symbol)], args=[claim_id, repr(self._clock.now()), reason.value])
        if result == "missing":
            raise PositionNotFound(symbol)
        if result != "ok":
            raise PositionConflict(symbol, str(result))
        position = await self.get(symbol)
        if position is None:  # deleted between the claim and the read: nothing to close
            raise PositionNotFound(symbol)
        return claim_id, position

    async def release(
        self, symbol: str, claim_id: str, error: str, next_attempt_at: float | None, *, quantity: int | None = None
    ) -> bool:
        """Return a claimed position to open after a failed close, recording why; `quantity` lowers the guarded
        quantity to what is still held (part was sold). False if the claim is not ours."""
        nxt = "" if next_attempt_at is None else repr(next_attempt_at)
        qty = "" if quantity is None else str(quantity)
        return bool(await self._release(keys=[keys.position(symbol)], args=[claim_id, error[:500], nxt, qty]))

    async def claim_holder(self, symbol: str) -> tuple[str, str, float | None]:
        """(state, claim id, claimed_at epoch s) of the position now, for fencing a closer before its order."""
        fields = ["state", "claim_id", "claimed_at"]
        state, claim_id, claimed_at = await self._redis.hmget(keys.position(symbol), fields)
        return str(state or ""), str(claim_id or ""), float(claimed_at) if claimed_at else None

    async def reduce(self, symbol: str, quantity: int) -> bool:
        """Lower the guarded quantity of an open position to `quantity` (the broker holds less). False if the
        position is not open."""
        return bool(await self._reduce(keys=[keys.position(symbol)], args=[quantity]) == "ok")

    async def remove(self, symbol: str) -> Position:
        """Stop guarding an open position without any order; the feed unsubscribes it.

        Raises PositionNotFound or PositionConflict (closing: an order may be in flight; closed).
        """
        current = await self.get(symbol)
        if current is None:
            raise PositionNotFound(symbol)
        result = await self._remove(
            keys=[keys.position(symbol), keys.OPEN_POSITIONS, keys.FEED_SUBSCRIPTIONS], args=[symbol]
        )
        if result == "missing" and current.state is not PositionState.OPEN:
            raise PositionNotFound(symbol)
        if result not in ("ok", "missing"):  # missing after reading it open: a resent call that already removed it
            raise PositionConflict(symbol, str(result))
        await self._redis.publish(keys.SUBSCRIPTION_REQUESTS_CHANNEL, f"unsub {symbol}")
        await self.publish_event("removed", symbol, position=current.public())
        return current

    async def complete(self, claim_id: str, record: CloseRecord) -> bool:
        """Mark the claimed position closed and journal the close. False if the claim is not ours."""
        done = await self._complete(
            keys=[keys.position(record.symbol), keys.OPEN_POSITIONS, keys.CLOSED_JOURNAL, keys.FEED_SUBSCRIPTIONS],
            args=[claim_id, record.symbol, record.to_json()],
        )
        if done:
            await self._redis.publish(keys.SUBSCRIPTION_REQUESTS_CHANNEL, f"unsub {record.symbol}")
        return bool(done)

    async def mark_unmonitored(self, symbol: str, since: float | None) -> bool:
        """Record (epoch s) or clear (None) that the monitor has no usable price for an open position.

        Returns False when the position is not open (nothing recorded).
        """
        value = "" if since is None else repr(since)
        return bool(await self._mark_unmonitored(keys=[keys.position(symbol)], args=[value]))

    async def journal(self, limit: int = 100) -> list[CloseRecord | MalformedRecord]:
        """The newest `limit` closes, newest first."""
        rows = await self._redis.lrange(keys.CLOSED_JOURNAL, 0, limit - 1)
        out: list[CloseRecord | MalformedRecord] = []
        for row in rows:
            try:
                out.append(CloseRecord.from_json(str(row)))
            except MalformedRecord as exc:
                out.append(exc)
        return out

    async def publish_event(self, kind: str, symbol: str, **data: Any) -> None:
        """Record an event in the `events` stream and publish it on `positions:events`."""
        payload = encode_event(kind, self._clock.now(), symbol, **data)
        async with self._redis.pipeline(transaction=False) as pipe:
            add_event(pipe, payload)
            pipe.publish(keys.POSITION_EVENTS_CHANNEL, payload)
            await pipe.execute()

    async def recent_events(self, count: int = 50) -> list[dict[str, Any]]:
        """The newest `count` events, newest first (an entry that is not an event is skipped)."""
        rows = cast(list[tuple[str, dict[str, str]]], await self._redis.xrevrange(keys.EVENTS_STREAM, count=count))
        events = []
        for _, fields in rows:
            with contextlib.suppress(ValueError):
                events.append(decode_event(fields))
        return events


def is_active(position: Position) -> bool:
    """True while the position still needs protecting or finishing (open or closing)."""
    return position.state is not PositionState.CLOSED
