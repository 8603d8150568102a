"""One read of everything a sweep needs: each open position's hash and its cached price, in one script call.

A pipeline of 2 x N HGETALLs spends most of its time in per-reply client overhead (and sending N key names);
one script that walks `positions:open` itself and returns every row as one nested reply does not.
Positions are parsed only when their hash changed since the last sweep (parsing dominates otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from libs.common import keys
from libs.common.models import MalformedRecord, Position
from libs.common.money import Paise, to_paise

# KEYS: positions:open. ARGV: the position and price key prefixes (from `keys`, so names stay defined once).
# Returns {symbols, then per symbol its position hash (flat) and its price's {ltp, as_of}}.
_READ_ALL = """
local symbols = redis.call('SMEMBERS', KEYS[1])
local out = {symbols}
for i, symbol in ipairs(symbols) do
  out[2 * i] = redis.call('HGETALL', ARGV[1] .. symbol)
  out[2 * i + 1] = redis.call('HMGET', ARGV[2] .. symbol, 'ltp', 'as_of')
end
return out
"""


@dataclass(frozen=True, slots=True)
class CachedPrice:
    """The two fields of `price:SYMBOL` a check needs."""

    ltp: Paise
    as_of: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Per open symbol: its position (or why it cannot be read) and its cached price (None when absent)."""

    positions: dict[str, Position | MalformedRecord]
    prices: dict[str, CachedPrice | MalformedRecord | None]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _price(symbol: str, ltp: str | None, as_of: str | None) -> CachedPrice | MalformedRecord | None:
    if ltp is None and as_of is None:
        return None
    try:
        return CachedPrice(ltp=to_paise(str(ltp)), as_of=float(str(as_of)))
    except ValueError as exc:
        return MalformedRecord(f"price:{symbol}: {exc}")


class SnapshotReader:
    """Reads snapshots; remembers parsed positions so an unchanged hash is not parsed again."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_READ_ALL)
        self._parsed: dict[str, tuple[tuple[str, ...], Position]] = {}

    async def read(self) -> Snapshot:
        """Every symbol in `positions:open` with its position and cached price (one script call)."""
        reply = cast(
            list[Any], await self._script(keys=[keys.OPEN_POSITIONS], args=[keys.POSITION_PREFIX, keys.PRICE_PREFIX])
        )
        symbols = [str(s) for s in reply[0]]
        positions: dict[str, Position | MalformedRecord] = {}
        prices: dict[str, CachedPrice | MalformedRecord | None] = {}
        parsed: dict[str, tuple[tuple[str, ...], Position]] = {}
        for i, symbol in enumerate(symbols):
            flat = tuple(reply[2 * i + 1])
            known = self._parsed.get(symbol)
            if known is not None and known[0] == flat:
                position: Position | MalformedRecord = known[1]
            else:
                try:
                    position = Position.from_redis(_pairs(flat) if flat else {"symbol": symbol})
                except MalformedRecord as exc:
                    position = exc
            if isinstance(position, Position):
                parsed[symbol] = (flat, position)
            positions[symbol] = position
            ltp, as_of = reply[2 * i + 2]
            prices[symbol] = _price(symbol, ltp, as_of)
        self._parsed = parsed
        return Snapshot(positions, prices)
