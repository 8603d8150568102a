"""The Redis price cache: `price:SYMBOL` hashes, the `prices:index` zset and the tick notices.

Writers (the feed) store a whole frame with one server-side script call and publish one notice per frame.
Readers (monitor, api) fetch many symbols in one pipeline and count/list the cache from the index,
never with a keyspace scan. The hash is the truth; a notice only says "look again".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.feed_lease import FENCE_CHECK, FencedOut, fence_checked
from libs.common.models import MalformedRecord, PriceEntry

# ARGV: ttl_s, as_of, channel, notice, price key prefix, then one string holding 5 fields per tick (symbol,
# ltp, instrument_key, ltt_ms, cp), each ended by \x1f. KEYS: prices:index. Empty ltt_ms/cp keep the old value.
# Hot path (50,000 ticks/s): the frame travels as one argument (hundreds of small arguments cost more than the
# writes), one HSET and one EXPIRE per tick, the index updated by one ZADD per 500 ticks. The price keys are
# built here from the prefix, so this script assumes a single Redis (no cluster), as the whole guard does.
# Fenced (the last two ARGV, see libs.common.feed_lease): only the feed leader's writes land.
_WRITE_FRAME = (
    FENCE_CHECK
    + """
local ttl = tonumber(ARGV[1])
local as_of = ARGV[2]
local prefix = ARGV[5]
local data = ARGV[6]
local find, sub = string.find, string.sub
local len = #data
local pos = 1
local n = 0
local members = {}
local m = 0
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
  if ltt ~= '' and cp ~= '' then
    redis.call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of,
      'ltt_ms', ltt, 'cp', cp)
  elseif ltt ~= '' then
    redis.call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of, 'ltt_ms', ltt)
  elseif cp ~= '' then
    redis.call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of, 'cp', cp)
  else
    redis.call('HSET', key, 'ltp', ltp, 'instrument_key', ikey, 'as_of', as_of, 'received_at', as_of)
  end
  redis.call('EXPIRE', key, ttl)
  n = n + 1
  members[m + 1] = as_of
  members[m + 2] = symbol
  m = m + 2
  if m >= 1000 then
    redis.call('ZADD', KEYS[1], unpack(members, 1, m))
    m = 0
  end
end
if m > 0 then redis.call('ZADD', KEYS[1], unpack(members, 1, m)) end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return n
"""
)

_SEP = "\x1f"
VOUCH_SLICE = 250  # symbols per vouch script call


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


# ARGV: ttl_s, as_of, then one symbol per key. KEYS: prices:index, then price:SYMBOL.
# Only symbols that still have a price are vouched for: a vouch never invents a price, and never moves
# `as_of` backwards (a tick written a moment after the vouch was decided is newer). Fenced like _WRITE_FRAME.
_VOUCH = (
    FENCE_CHECK
    + """
local ttl = tonumber(ARGV[1])
local as_of = ARGV[2]
local as_of_n = tonumber(as_of)
local vouched = 0
for i = 2, #KEYS do
  local current = redis.call('HGET', KEYS[i], 'as_of')
  if current then
    if (tonumber(current) or 0) < as_of_n then
      redis.call('HSET', KEYS[i], 'as_of', as_of)
      redis.call('ZADD', KEYS[1], as_of, ARGV[i + 1])
    end
    redis.call('EXPIRE', KEYS[i], ttl)
    vouched = vouched + 1
  end
end
return vouched
"""
)


def _unfenced() -> list[str]:
    return ["", ""]


@dataclass(frozen=True, slots=True)
class Tick:
    """One decoded price update. `ltp` is a rupee string; `ltt_ms`/`cp` are None when the frame lacked them."""

    symbol: str
    instrument_key: str
    ltp: str
    ltt_ms: int | None = None
    cp: str | None = None


def tick_notice(as_of: float, ticks: Sequence[Tick]) -> str:
    """The small JSON published on `ticks` per frame: {"as_of": s, "prices": {SYMBOL: "575.00"}}."""
    return json.dumps({"as_of": as_of, "prices": {t.symbol: t.ltp for t in ticks}}, separators=(",", ":"))


def parse_tick_notice(payload: str) -> tuple[float, dict[str, str]]:
    """(as_of, {symbol: rupee string}) from a tick notice; raises ValueError when malformed."""
    data = json.loads(payload)
    prices = data["prices"]
    if not isinstance(prices, dict):
        raise ValueError("prices must be an object")
    return float(data["as_of"]), {str(k): str(v) for k, v in prices.items()}


class PriceCache:
    """Reads and writes the price cache. One instance per Redis client."""

    def __init__(self, redis: Redis, ttl_s: int, *, fence: Callable[[], list[str]] | None = None) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._fence = fence or _unfenced  # the feed passes its lease's fence_args: a standby's writes are refused
        self._write = redis.register_script(_WRITE_FRAME)
        self._vouch = redis.register_script(_VOUCH)
        # Ticks a Redis outage kept out of the cache, newest per symbol. They are written with the next
        # frame or vouch: a price that is not ticking again (a pinned or halted one) must not be lost,
        # and a vouch must never mark the older cached price current in its place.
        self._unwritten: dict[str, Tick] = {}

    def discard_unwritten(self) -> None:
        """Forget ticks an outage kept back (a feed taking the lead again: another leader wrote newer ones)."""
        self._unwritten = {}

    async def write_frame(self, ticks: Sequence[Tick], as_of: float, *, publish: bool = True) -> None:
        """Store every tick of one frame and refresh its expiry, then publish one notice (one round trip).

        Ticks left unwritten by an earlier RedisError go with it. Raises RedisError (the ticks are kept
        and written by the next call or vouch).
        """
        if self._unwritten:
            pending, self._unwritten = self._unwritten, {}
            ticks = list({**pending, **{t.symbol: t for t in ticks}}.values())
        if not ticks:
            return
        notice = tick_notice(as_of, ticks) if publish else ""
        args: list[str | int] = [
            self._ttl_s,
            repr(as_of),
            keys.TICKS_CHANNEL,
            notice,
            keys.PRICE_PREFIX,
            _frame_payload(ticks),
            *self._fence(),
        ]
        try:
            fence_checked(await self._write(keys=[keys.PRICE_INDEX], args=args))
        except FencedOut:
            raise  # not ours to write any more: the leader has newer prices
        except RedisError:
            # Keep them for the next call; a newer tick that arrived meanwhile wins.
            self._unwritten = {**{t.symbol: t for t in ticks}, **self._unwritten}
            raise

    async def vouch(self, symbols: Iterable[str], as_of: float) -> int:
        """Mark the cached prices of `symbols` current as of `as_of` (healthy feed, quiet symbol).

        Returns how many symbols had a price to vouch for. Ticks an earlier Redis outage left unwritten are
        written first (as of `as_of`). Raises RedisError.
        """
        if self._unwritten:
            await self.write_frame([], as_of)
        symbols = list(symbols)
        vouched = 0
        # In slices: one call over 5,000 symbols holds Redis (and the caller's loop, packing 10,000 arguments)
        # for tens of ms, which every tick written meanwhile would wait for.
        for start in range(0, len(symbols), VOUCH_SLICE):
            part = symbols[start : start + VOUCH_SLICE]
            result = await self._vouch(
                keys=[keys.PRICE_INDEX, *(keys.price(s) for s in part)],
                args=[self._ttl_s, repr(as_of), *part, *self._fence()],
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
