"""Positions in Redis and the one atomic claim that makes every close happen at most once.

A position lives in `position:SYMBOL`; its state moves open -> closing -> closed only through the
scripts below, each of which checks the state (and the claim id) inside Redis. The monitor and the
API both close through `libs.common.closing`, which uses these; nobody writes the state directly.

Every change takes the next revision from `positions:rev` into the record's `rev` (the `_REV` snippet; the
counter is the last of a script's KEYS). The events of a change carry it, so a reader holding copies from an
event and from a read keeps the one with the higher `rev`; one counter for all symbols, so a position opened
after another was removed outranks what was known of the removed one.
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

# The next revision into the record (KEYS[1]); `rev` holds it for the script's reply.
_REV = """
local rev = redis.call('INCR', KEYS[#KEYS])
redis.call('HSET', KEYS[1], 'rev', rev)
"""

# KEYS: position, open set, subscriptions hash, revision counter. ARGV: symbol, instrument_key, then field/value
# pairs. Returns {'ok' or the state that refused it, rev, opened_rev}. A resent call of our own (same opened_at)
# answers 'ok' again.
_OPEN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'open' or state == 'closing' then
  for i = 3, #ARGV, 2 do
    if ARGV[i] == 'opened_at' and state == 'open' and redis.call('HGET', KEYS[1], 'opened_at') == ARGV[i + 1] then
      local revs = redis.call('HMGET', KEYS[1], 'rev', 'opened_rev')
      return {'ok', tonumber(revs[1] or 0), tonumber(revs[2] or 0)}
    end
  end
  return {state, 0, 0}
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
REV
redis.call('HSET', KEYS[1], 'opened_rev', rev)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return {'ok', rev, rev}
"""

# Every script below is idempotent per claim id: redis-py resends a script whose reply timed out, and a second
# run of one that already took effect must answer as the first did.

# KEYS: position, revision counter. ARGV: claim_id, claimed_at, reason. Returns the claimed record (HGETALL) or the
# state that refused the claim.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'closing' and redis.call('HGET', KEYS[1], 'claim_id') == ARGV[1] then
  return redis.call('HGETALL', KEYS[1])
end
if state ~= 'open' then return state end
redis.call('HSET', KEYS[1], 'state', 'closing', 'claim_id', ARGV[1], 'claimed_at', ARGV[2], 'close_reason', ARGV[3])
REV
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: position, journal, revision counter. ARGV: claim_id, error, next_attempt_at, quantity ('' = unchanged),
# the journal record of what was sold ('' = none), the safety net whose fired legs' fills that record holds ('' =
# none). Reopens a position whose close failed (with the quantity still held when part of it was sold, that part
# journaled in the same step, and that net marked disarmed if the position still names it, so no later disarm
# reports those fills again). Returns its rev, 0 when the claim is not ours.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'released_claim') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'open' then
  return tonumber(redis.call('HGET', KEYS[1], 'rev') or 1)
end
if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'closing' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'open', 'claim_id', '', 'claimed_at', '', 'last_error', ARGV[2],
           'next_attempt_at', ARGV[3], 'released_claim', ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'quantity', ARGV[4]) end
redis.call('HINCRBY', KEYS[1], 'close_attempts', 1)
if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[2], ARGV[5]) end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'net_gtt_id') == ARGV[6] then
  redis.call('HSET', KEYS[1], 'net_state', 'cancelled')
end
REV
return rev
"""

# KEYS: position, open set, journal, subscriptions hash, revision counter. ARGV: claim_id, symbol, record JSON,
# the subscription requests channel. Asks the feed to unsubscribe the symbol. Returns the closed record's rev, 0
# when the claim is not ours.
_COMPLETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] then return 0 end
if state == 'closed' then return tonumber(redis.call('HGET', KEYS[1], 'rev') or 1) end
if state ~= 'closing' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'closed', 'last_error', '', 'next_attempt_at', '')
redis.call('HINCRBY', KEYS[1], 'close_attempts', 1)
REV
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('PUBLISH', ARGV[4], 'unsub ' .. ARGV[2])
return rev
"""

# KEYS: position, revision counter. ARGV: quantity. Lowers the guarded quantity of an open position (the broker
# holds less). Returns {'ok' or the state that refused it, rev}.
_REDUCE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return {state or 'missing', 0} end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1])
REV
return {'ok', rev}
"""

# KEYS: position, open set, subscriptions hash, revision counter. ARGV: symbol. Stops guarding an open position
# (no order). Returns {'ok' or the state that refused it, the rev of the removal (the record is gone)}.
_REMOVE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return {state or 'missing', 0} end
REV
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return {'ok', rev}
"""

# KEYS: position, revision counter. ARGV: field/value pairs. Changes SL/TP only while the position is open.
# Returns {'ok' or the state that refused it, rev}.
_UPDATE_LEVELS = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return {state or 'missing', 0} end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
REV
return {'ok', rev}
"""


# KEYS: position, revision counter. ARGV: epoch s the monitor lost its prices, or '' when they came back. Open
# positions only. Returns the rev, 0 when the position is not open.
_MARK_UNMONITORED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'unmonitored_since', ARGV[1])
REV
return rev
"""


def with_rev(script: str) -> str:
    """`script` with its `REV` line replaced by the snippet that gives the record the next revision."""
    if "\nREV\n" not in script:
        raise ValueError("the script has no REV line")
    return script.replace("\nREV\n", _REV)


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
        self._open = redis.register_script(with_rev(_OPEN))
        self._claim = redis.register_script(with_rev(_CLAIM))
        self._release = redis.register_script(with_rev(_RELEASE))
        self._complete = redis.register_script(with_rev(_COMPLETE))
        self._update_levels = redis.register_script(with_rev(_UPDATE_LEVELS))
        self._mark_unmonitored = redis.register_script(with_rev(_MARK_UNMONITORED))
        self._reduce = redis.register_script(with_rev(_REDUCE))
        self._remove = redis.register_script(with_rev(_REMOVE))

    async def open(self, position: Position) -> Position:
        """Register an open position and ask the feed to subscribe its symbol.

        Raises PositionConflict when the symbol already has an open or closing position.
        """
        fields = [item for pair in position.to_redis().items() for item in pair]
        result, rev, opened_rev = await self._open(
            keys=[keys.position(position.symbol), keys.OPEN_POSITIONS, keys.FEED_SUBSCRIPTIONS, keys.POSITIONS_REV],
            args=[position.symbol, position.instrument_key, *fields],
        )
        if result != "ok":
            raise PositionConflict(position.symbol, str(result))
        position = position.model_copy(update={"rev": int(rev), "opened_rev": int(opened_rev)})
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
        result, rev = await self._update_levels(keys=[keys.position(symbol), keys.POSITIONS_REV], args=fields)
        if result != "ok":
            raise PositionConflict(symbol, str(result))
        await self.publish_event(
            "levels_changed", symbol, stop_loss=data.get("stop_loss"), take_profit=data.get("take_profit"), rev=rev
        )
        return updated.model_copy(update={"rev": int(rev)})

    async def claim(self, symbol: str, reason: CloseReason, claim_id: str | None = None) -> tuple[str, Position]:
        """Atomically move `symbol` from open to closing; only the holder of the returned claim id may finish it.
        A repeated claim with the same `claim_id` (a retried call) answers as the first did.

        Raises PositionNotFound (no position) or PositionConflict (already closing or closed).
        """
        claim_id = claim_id or new_claim_id()
        result = await self._claim(
            keys=[keys.position(symbol), keys.POSITIONS_REV], args=[claim_id, repr(self._clock.now()), reason.value]
        )
        if result == "missing":
            raise PositionNotFound(symbol)
        if not isinstance(result, list):
            raise PositionConflict(symbol, str(result))
        # The claimed record as the claim left it, from the same atomic step (one round trip fewer to the order).
        return claim_id, Position.from_redis(dict(zip(result[::2], result[1::2], strict=True)))

    async def release(
        self,
        symbol: str,
        claim_id: str,
        error: str,
        next_attempt_at: float | None,
        *,
        quantity: int | None = None,
        sold: CloseRecord | None = None,
        net_spent: str = "",
    ) -> int:
        """Return a claimed position to open after a failed close, recording why; `quantity` lowers the guarded
        quantity to what is still held (part was sold) and `sold` journals that part, in the same step; `net_spent`
        (the GTT ids of a safety net whose fired legs' fills are in `sold`) marks that net disarmed with it (the
        keeper then nets the rest afresh). Returns the reopened record's rev, 0 (false) if the claim is not ours."""
        nxt = "" if next_attempt_at is None else repr(next_attempt_at)
        qty = "" if quantity is None else str(quantity)
        args = [claim_id, error[:500], nxt, qty, "" if sold is None else sold.to_json(), net_spent]
        position_keys = [keys.position(symbol), keys.CLOSED_JOURNAL, keys.POSITIONS_REV]
        return int(await self._release(keys=position_keys, args=args))

    async def claim_holder(self, symbol: str) -> ClaimHolder:
        """(state, claim id, claimed_at epoch s) of the position now, for fencing a closer before its order."""
        return claim_holder_of(await self._redis.hmget(keys.position(symbol), CLAIM_HOLDER_FIELDS))

    async def reduce(self, symbol: str, quantity: int) -> int:
        """Lower the guarded quantity of an open position to `quantity` (the broker holds less). Returns the
        record's rev, 0 (false) if the position is not open."""
        result, rev = await self._reduce(keys=[keys.position(symbol), keys.POSITIONS_REV], args=[quantity])
        return int(rev) if result == "ok" else 0

    async def remove(self, symbol: str) -> Position:
        """Stop guarding an open position without any order; the feed unsubscribes it.

        Raises PositionNotFound or PositionConflict (closing: an order may be in flight; closed).
        """
        current = await self.get(symbol)
        if current is None:
            raise PositionNotFound(symbol)
        result, rev = await self._remove(
            keys=[keys.position(symbol), keys.OPEN_POSITIONS, keys.FEED_SUBSCRIPTIONS, keys.POSITIONS_REV],
            args=[symbol],
        )
        if result == "missing" and current.state is not PositionState.OPEN:
            raise PositionNotFound(symbol)
        if result not in ("ok", "missing"):  # missing after reading it open: a resent call that already removed it
            raise PositionConflict(symbol, str(result))
        await self._redis.publish(keys.SUBSCRIPTION_REQUESTS_CHANNEL, f"unsub {symbol}")
        await self.publish_event("removed", symbol, position=current.public(), rev=int(rev) or current.rev)
        return current

    async def complete(self, claim_id: str, record: CloseRecord) -> int:
        """Mark the claimed position closed and journal the close. Returns the closed record's rev, 0 (false) if
        the claim is not ours."""
        position_keys = [keys.position(record.symbol), keys.OPEN_POSITIONS, keys.CLOSED_JOURNAL]
        rev = await self._complete(
            keys=[*position_keys, keys.FEED_SUBSCRIPTIONS, keys.POSITIONS_REV],
            args=[claim_id, record.symbol, record.to_json(), keys.SUBSCRIPTION_REQUESTS_CHANNEL],
        )
        return int(rev)

    async def mark_unmonitored(self, symbol: str, since: float | None) -> int:
        """Record (epoch s) or clear (None) that the monitor has no usable price for an open position.

        Returns the record's rev, 0 (false) when the position is not open (nothing recorded).
        """
        value = "" if since is None else repr(since)
        return int(await self._mark_unmonitored(keys=[keys.position(symbol), keys.POSITIONS_REV], args=[value]))

    async def read_at_rev(self, symbol: str) -> tuple[int, Position | None]:
        """The position on `symbol` (None when there is none) with the revision counter read in the same
        transaction: a record absent at that revision is older news than anything of a higher one.
        Raises MalformedRecord."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.POSITIONS_REV)
            pipe.hgetall(keys.position(symbol))
            rev, data = await pipe.execute()
        return int(rev or 0), Position.from_redis(data) if data else None

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


CLAIM_HOLDER_FIELDS = ["state", "claim_id", "claimed_at"]
ClaimHolder = tuple[str, str, float | None]  # (state, claim id, claimed_at epoch s)


def claim_holder_of(row: Sequence[Any]) -> ClaimHolder:
    """(state, claim id, claimed_at epoch s) from an HMGET of CLAIM_HOLDER_FIELDS of a position's key."""
    state, claim_id, claimed_at = row
    return str(state or ""), str(claim_id or ""), float(claimed_at) if claimed_at else None


def is_active(position: Position) -> bool:
    """True while the position still needs protecting or finishing (open or closing)."""
    return position.state is not PositionState.CLOSED
