"""The Redis price cache: `price:SYMBOL` hashes, the `prices:index` zset and the tick notices.

Writers (the feed) store a whole frame with one server-side script call and publish one notice per frame.
Readers (monitor, api) fetch many symbols in one pipeline and count/list the cache from the index,
never with a keyspace scan. The hash is the truth; a notice only says "look again".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.feed_lease import FENCE_CHECK, FencedOut, fence_checked
from libs.common.freshness import TRUTH_FIELDS, PriceTruth
from libs.common.models import MalformedRecord, PriceEntry

# ARGV: ttl_s, as_of, channel, notice, price key prefix, then one string holding 5 fields per tick (symbol,
# ltp, instrument_key, ltt_ms, cp), each ended by \x1f, then the name of a field to also set to as_of ('' none;
# `rest_at` for REST LTP polls). KEYS: prices:index. Empty ltt_ms/cp keep the old value.
# Ticks never move backwards: a tick whose exchange time (ltt_ms) is older than the stored one is dropped here,
# in the script that writes (so no retried or reordered frame can slip in between a check and a write).
# Returns {written, dropped symbol...}; with drops the notice is not published (it named the dropped prices):
# the caller publishes one without them.
# Hot path (50,000 ticks/s): the frame travels as one argument (hundreds of small arguments cost more than the
# writes), one HGET, one HSET and one EXPIRE per tick, the index updated by one ZADD per 500 ticks. The price
# keys are built here from the prefix, so this script assumes a single Redis (no cluster), as the whole guard does.
# Fenced (the last two ARGV, see libs.common.feed_lease): only the feed leader's writes land.
_WRITE_FRAME = (
    FENCE_CHECK
    + """
local ttl = tonumber(ARGV[1])
local as_of = ARGV[2]
local prefix = ARGV[5]
local data = ARGV[6]
local also = ARGV[7]
local find, sub, call = string.find, string.sub, redis.call
local len = #data
local pos = 1
local n = 0
local members = {}
local m = 0
local dropped = {}
while pos <= len do
  local e = find(data, '\\31', pos, true)
  local symbol = sub(data, pos, e - 1)
  pos = e + 1
  e = find(data, '\\31', pos, true)
  local ltp = sub(data, pos, e - 1)
  pos = e + 1
  e = find(data, '\\31', pos, true)
  local ikey = sub(data, pos, e - 1)
  pos = e + 1
  e = find(data, '\\31', pos, true)
  local ltt = sub(data, pos, e - 1)
  pos = e + 1
  e = find(data, '\\31', pos, true)
  local cp = sub(data, pos, e - 1)
  pos = e + 1
  local key = prefix .. symbol
  local older = false
  if ltt ~= '' then
    local stored = call('HGET', key, 'ltt_ms')
    older = stored and (tonumber(stored) or 0) > (tonumber(ltt) or 0)
  end
  if older then
    dropped[#dropped + 1] = symbol
  else
    if ltt ~= '' and cp ~= '' then
      call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of,
        'ltt_ms', ltt, 'cp', cp)
    elseif ltt ~= '' then
      call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of, 'ltt_ms', ltt)
    elseif cp ~= '' then
      call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of, 'cp', cp)
    else
      call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of)
    end
    if also ~= '' then call('HSET', key, also, as_of) end
    call('EXPIRE', key, ttl)
    n = n + 1
    members[m + 1] = as_of
    members[m + 2] = symbol
    m = m + 2
    if m >= 1000 then
      call('ZADD', KEYS[1], unpack(members, 1, m))
      m = 0
    end
  end
end
if m > 0 then call('ZADD', KEYS[1], unpack(members, 1, m)) end
if ARGV[4] ~= '' and #dropped == 0 then call('PUBLISH', ARGV[3], ARGV[4]) end
return {n, unpack(dropped)}
"""
)

_SEP = "\x1f"
# Symbols per vouch script call: a frame's script that arrives meanwhile waits for the call in Redis (about 2.5 us per
# symbol: 0.25 ms here, 0.7-2.6 ms at 250, which made the slowest 1 % of ticks). More calls cost the feed ~0.1 ms each.
VOUCH_SLICE = 100


def _frame_payload(ticks: Sequence[Tick]) -> str:
    """The ticks as one string for `_WRITE_FRAME`: 5 fields per tick, each ended by \x1f."""
    parts: list[str] = []
    append = parts.append
    for t in ticks:
        append(t.symbol)
        append(t.ltp)
        append(t.instrument_key)
        append("" if t.ltt_ms is None else str(t.ltt_ms))
        append(t.cp or "")
    parts.append("")
    return _SEP.join(parts)


# ARGV: ttl_s, as_of, price key prefix, then one string holding the symbols, each ended by \x1f. KEYS: prices:index.
# Only symbols that still have a price are vouched for: a vouch never invents a price, and never moves
# `as_of` backwards (a tick written a moment after the vouch was decided is newer). Fenced like _WRITE_FRAME.
# The symbols travel as one argument and the index gets one ZADD per call, as in _WRITE_FRAME: the feed vouches for
# every quiet symbol every VOUCH_INTERVAL_S, and packing two arguments per symbol held its event loop (and the
# ticks behind it) for longer than Redis took to run the script.
_VOUCH = (
    FENCE_CHECK
    + """
local ttl = tonumber(ARGV[1])
local as_of = ARGV[2]
local as_of_n = tonumber(as_of)
local prefix = ARGV[3]
local data = ARGV[4]
local find, sub, call = string.find, string.sub, redis.call
local len = #data
local pos = 1
local vouched = 0
local members = {}
local m = 0
while pos <= len do
  local e = find(data, '\\31', pos, true)
  local symbol = sub(data, pos, e - 1)
  pos = e + 1
  local key = prefix .. symbol
  local current = call('HGET', key, 'as_of')
  if current then
    if (tonumber(current) or 0) < as_of_n then
      call('HSET', key, 'as_of', as_of)
      members[m + 1] = as_of
      members[m + 2] = symbol
      m = m + 2
    end
    call('EXPIRE', key, ttl)
    vouched = vouched + 1
  end
end
if m > 0 then call('ZADD', KEYS[1], unpack(members, 1, m)) end
return vouched
"""
)


def _unfenced() -> list[str]:
    return ["", ""]


# ARGV: one (symbol, reason) pair per key. KEYS: prices:index, then price:SYMBOL.
# An instrument found silent while its segment trades: its price is dated back to its last real tick
# (`received_at`), so every reader sees its true age, and marked with when and why. A newer tick (or REST price)
# moves `as_of` past `silent_since`, which ends the silence without touching these fields on the hot path.
# Fenced like _WRITE_FRAME.
_SILENCE = (
    FENCE_CHECK
    + """
local marked = 0
for i = 2, #KEYS do
  local row = redis.call('HMGET', KEYS[i], 'as_of', 'received_at')
  if row[1] then
    local last = row[2] or row[1]
    if (tonumber(last) or 0) > (tonumber(row[1]) or 0) then last = row[1] end
    redis.call('HSET', KEYS[i], 'as_of', last, 'silent_since', last, 'silent_reason', ARGV[(i - 1) * 2])
    redis.call('ZADD', KEYS[1], last, ARGV[(i - 1) * 2 - 1])
    marked = marked + 1
  end
end
return marked
"""
)


class Tick(NamedTuple):
    """One decoded price update. `ltp` is a rupee string; `ltt_ms`/`cp` are None when the frame lacked them.

    A named tuple, not a frozen dataclass: the feed builds 10,000+ a second and a frozen dataclass's `__init__`
    (one `object.__setattr__` per field) costs twice as much."""

    symbol: str
    instrument_key: str
    ltp: str
    ltt_ms: int | None = None
    cp: str | None = None


def tick_notice(as_of: float, ticks: Sequence[Tick], *, rest: bool = False) -> str:
    """The small JSON published on `ticks` per frame: {"as_of": s, "prices": {SYMBOL: "575.00"}}, plus
    `"source": "rest"` for prices from the REST LTP poll."""
    data: dict[str, object] = {"as_of": as_of, "prices": {t.symbol: t.ltp for t in ticks}}
    if rest:
        data["source"] = "rest"
    return orjson.dumps(data).decode()


def parse_tick_notice(payload: str) -> tuple[float, dict[str, str]]:
    """(as_of, {symbol: rupee string}) from a tick notice; raises ValueError when malformed."""
    as_of, prices, _ = parse_notice(payload)
    return as_of, prices


def parse_notice(payload: str) -> tuple[float, dict[str, str], bool]:
    """(as_of, {symbol: rupee string}, from the REST poll) from a tick notice; raises ValueError when malformed."""
    data = orjson.loads(payload)  # orjson.JSONDecodeError is a ValueError
    prices = data["prices"]
    if not isinstance(prices, dict):
        raise ValueError("prices must be an object")
    return float(data["as_of"]), {str(k): str(v) for k, v in prices.items()}, data.get("source") == "rest"


def truth_of(symbol: str, row: Sequence[str | None]) -> PriceTruth | MalformedRecord | None:
    """What `HMGET price:SYMBOL TRUTH_FIELDS` (`row`) says: None when expired or never seen, MalformedRecord when
    unreadable."""
    if row[0] is None and row[1] is None:  # neither ltp nor as_of
        return None
    try:
        return PriceTruth.from_row(row)
    except ValueError as exc:
        return MalformedRecord(f"price:{symbol}: {exc}")


class PriceCache:
    """Reads and writes the price cache. One instance per Redis client."""

    def __init__(self, redis: Redis, ttl_s: int, *, fence: Callable[[], list[str]] | None = None) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._fence = fence or _unfenced  # the feed passes its lease's fence_args: a standby's writes are refused
        self._write = redis.register_script(_WRITE_FRAME)
        self._vouch = redis.register_script(_VOUCH)
        self._silence = redis.register_script(_SILENCE)
        self.out_of_order = 0  # ticks dropped because the cache already held a newer one (by exchange time)
        # Ticks a Redis outage kept out of the cache, newest per symbol. They are written with the next
        # frame or vouch: a price that is not ticking again (a pinned or halted one) must not be lost,
        # and a vouch must never mark the older cached price current in its place.
        self._unwritten: dict[str, Tick] = {}

    def discard_unwritten(self) -> None:
        """Forget ticks an outage kept back (a feed taking the lead again: another leader wrote newer ones)."""
        self._unwritten = {}

    async def write_frame(self, ticks: Sequence[Tick], as_of: float, *, publish: bool = True) -> None:
        """Store every tick of one frame and refresh its expiry, then publish one notice (one round trip).

        A tick older (by `ltt_ms`) than the cached one is dropped and counted in `out_of_order`. Ticks left
        unwritten by an earlier RedisError go with it. Raises RedisError (the ticks are kept and written by the
        next call or vouch).
        """
        if self._unwritten:
            pending, self._unwritten = self._unwritten, {}
            ticks = list({**pending, **{t.symbol: t for t in ticks}}.values())
        if not ticks:
            return
        try:
            await self._store(ticks, as_of, publish=publish, rest=False)
        except FencedOut:
            raise  # not ours to write any more: the leader has newer prices
        except RedisError:
            # Keep them for the next call; a newer tick that arrived meanwhile wins.
            self._unwritten = {**{t.symbol: t for t in ticks}, **self._unwritten}
            raise

    async def write_rest(self, ticks: Sequence[Tick], as_of: float) -> None:
        """Store prices from the REST LTP poll (source `rest`: `rest_at` = `as_of`) and publish their notice.
        Raises RedisError."""
        if ticks:
            await self._store(ticks, as_of, publish=True, rest=True)

    async def _store(self, ticks: Sequence[Tick], as_of: float, *, publish: bool, rest: bool) -> None:
        notice = tick_notice(as_of, ticks, rest=rest) if publish else ""
        args: list[str | int] = [
            self._ttl_s,
            repr(as_of),
            keys.TICKS_CHANNEL,
            notice,
            keys.PRICE_PREFIX,
            _frame_payload(ticks),
            "rest_at" if rest else "",
            *self._fence(),
        ]
        result = cast(list[Any], fence_checked(await self._write(keys=[keys.PRICE_INDEX], args=args)))
        if len(result) > 1:
            dropped = {str(s) for s in result[1:]}
            self.out_of_order += len(dropped)
            kept = [t for t in ticks if t.symbol not in dropped]
            if publish and kept:
                await self._redis.publish(keys.TICKS_CHANNEL, tick_notice(as_of, kept, rest=rest))

    async def mark_silent(self, reasons: Mapping[str, str]) -> int:
        """Date the prices of `reasons`' symbols back to their last real tick and mark them silent (with the
        reason), until a newer tick. Returns how many had a price. Raises RedisError."""
        symbols = list(reasons)
        if not symbols:
            return 0
        args: list[str] = []
        for symbol in symbols:
            args += [symbol, reasons[symbol]]
        result = await self._silence(
            keys=[keys.PRICE_INDEX, *(keys.price(s) for s in symbols)], args=[*args, *self._fence()]
        )
        return int(fence_checked(result))

    async def truths(self, symbols: Sequence[str]) -> dict[str, PriceTruth | MalformedRecord | None]:
        """What each symbol's price says about its own freshness (None when expired or never seen), one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for s in symbols:
                pipe.hmget(keys.price(s), TRUTH_FIELDS)
            rows = await pipe.execute()
        return {symbol: truth_of(symbol, row) for symbol, row in zip(symbols, rows, strict=True)}

    async def vouch(self, symbols: Iterable[str], as_of: float) -> int:
        """Mark the cached prices of `symbols` current as of `as_of` (healthy feed, quiet symbol).

        Returns how many symbols had a price to vouch for. Ticks an earlier Redis outage left unwritten are
        written first (as of `as_of`). Raises RedisError.
        """
        if self._unwritten:
            await self.write_frame([], as_of)
        symbols = list(symbols)
        vouched = 0
        # In slices: one call over 5,000 symbols holds Redis for 10+ ms, which every tick written meanwhile waits for.
        for start in range(0, len(symbols), VOUCH_SLICE):
            part = symbols[start : start + VOUCH_SLICE]
            result = await self._vouch(
                keys=[keys.PRICE_INDEX],
                args=[self._ttl_s, repr(as_of), keys.PRICE_PREFIX, _SEP.join(part) + _SEP, *self._fence()],
            )
            vouched += int(fence_checked(result))
        return vouched

    async def read(self, symbols: Sequence[str]) -> dict[str, PriceEntry | MalformedRecord | None]:
        """The cached entry of each symbol (None when expired or never seen), in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for s in symbols:
                pipe.hgetall(keys.price(s))
            rows = await pipe.execute()
        out: dict[str, PriceEntry | MalformedRecord | None] = {}
        for symbol, row in zip(symbols, rows, strict=True):
            if not row:
                out[symbol] = None
                continue
            try:
                out[symbol] = PriceEntry.from_redis(symbol, row)
            except MalformedRecord as exc:
                out[symbol] = exc
        return out

    async def read_one(self, symbol: str) -> PriceEntry | None:
        """The cached entry of `symbol`, None when expired/absent; raises MalformedRecord on a corrupt hash."""
        entry = (await self.read([symbol]))[symbol]
        if isinstance(entry, MalformedRecord):
            raise entry
        return entry

    async def count(self, now: float) -> int:
        """How many symbols have an unexpired price (from the index, no scan)."""
        return int(await self._redis.zcount(keys.PRICE_INDEX, now - self._ttl_s, "+inf"))

    async def last_update(self) -> float | None:
        """Epoch s of the newest price write or vouch, None when the cache is empty."""
        newest = await self._redis.zrange(keys.PRICE_INDEX, -1, -1, withscores=True)
        return float(newest[0][1]) if newest else None

    async def newest(self, limit: int, now: float) -> list[tuple[str, float]]:
        """Up to `limit` (symbol, as_of) pairs with unexpired prices, newest first."""
        rows = await self._redis.zrevrangebyscore(
            keys.PRICE_INDEX, "+inf", now - self._ttl_s, start=0, num=limit, withscores=True
        )
        return [(str(row[0]), float(row[1])) for row in rows]

    async def trim_index(self, now: float) -> int:
        """Drop index members whose price has expired; returns how many were dropped."""
        return int(await self._redis.zremrangebyscore(keys.PRICE_INDEX, "-inf", f"({now - self._ttl_s}"))
