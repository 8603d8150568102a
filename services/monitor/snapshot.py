"""What a sweep reads: each open position and its cached price, in slices, without re-sending unchanged hashes.

A sweep runs every second over every open position. Re-reading and re-parsing thousands of unchanged position
hashes each time kept Redis busy in one long script and the monitor's event loop busy parsing, while tick
notices waited. So: `positions:open` is read once, then slices of symbols go through a script that returns
per symbol a digest of its position hash and its price's {ltp, as_of}; only hashes whose digest changed are
fetched and parsed. Between slices the event loop runs (tick notices are decided meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from libs.common import keys
from libs.common.freshness import TRUTH_FIELDS, PriceTruth
from libs.common.models import MalformedRecord, Position
from libs.common.money import Paise, ltp_paise

# Symbols per script call. It bounds how long one slice holds Redis (about 10 us a symbol in the script) and
# then the monitor's event loop (parsing and checking it, about 10 us a symbol): a tick notice arriving meanwhile
# waits that long. At 200 a slice held each for 2-3 ms (tick -> decision p99 17 ms at 10,000 positions).
SLICE = 50

# ARGV: the position and price key prefixes (from `keys`, so names stay defined once), then the symbols.
# Returns per symbol {sha1 of its position hash (false when absent), then the price's TRUTH_FIELDS}.
_READ_SLICE = """
local out = {}
for i = 3, #ARGV do
  local flat = redis.call('HGETALL', ARGV[1] .. ARGV[i])
  local digest = false
  if #flat > 0 then digest = redis.sha1hex(table.concat(flat, '\\0')) end
  local price = redis.call('HMGET', ARGV[2] .. ARGV[i], FIELDS)
  out[#out + 1] = {digest, unpack(price)}
end
return out
""".replace("FIELDS", ", ".join(f"'{name}'" for name in TRUTH_FIELDS))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Per open symbol: its position (or why it cannot be read) and its cached price (None when absent); `rev`:
    the revision counter when `positions:open` was read (a symbol not in it was not open as of that rev)."""

    positions: dict[str, Position | MalformedRecord]
    prices: dict[str, PriceTruth | MalformedRecord | None]
    rev: int = 0


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _missing(symbol: str) -> MalformedRecord:
    try:
        Position.from_redis({"symbol": symbol})
    except MalformedRecord as exc:
        return exc
    return MalformedRecord(f"position:{symbol}: no record")


class SnapshotReader:
    """Reads snapshots; remembers parsed positions (by digest) and prices (by text) so unchanged ones cost
    a comparison."""

    def __init__(self, redis: Redis, slice_size: int = SLICE) -> None:
        self._redis = redis
        self._slice = slice_size
        self._script = redis.register_script(_READ_SLICE)
        self._parsed: dict[str, tuple[str, Position | MalformedRecord]] = {}
        self._ltps: dict[str, tuple[str, Paise]] = {}

    async def read(self) -> Snapshot:
        """Every symbol in `positions:open` with its position and cached price."""
        positions: dict[str, Position | MalformedRecord] = {}
        prices: dict[str, PriceTruth | MalformedRecord | None] = {}
        rev = 0
        async for part in self.read_slices():
            positions.update(part.positions)
            prices.update(part.prices)
            rev = part.rev
        return Snapshot(positions, prices, rev)

    async def read_slices(self) -> AsyncIterator[Snapshot]:
        """The snapshot one slice of symbols at a time (a script call, plus one read of changed hashes); one
        empty slice when no position is open."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.smembers(keys.OPEN_POSITIONS)
            pipe.get(keys.POSITIONS_REV)
            members, rev_text = await pipe.execute()
        symbols, rev = sorted(cast(set[str], members)), int(rev_text or 0)
        parsed: dict[str, tuple[str, Position | MalformedRecord]] = {}
        for start in range(0, max(len(symbols), 1), self._slice):
            if start:
                await asyncio.sleep(0)  # let tick notices through between slices
            part = symbols[start : start + self._slice]
            rows: list[Any] = []
            if part:
                rows = cast(list[Any], await self._script(args=[keys.POSITION_PREFIX, keys.PRICE_PREFIX, *part]))
            changed = [
                (symbol, str(row[0]))
                for symbol, row in zip(part, rows, strict=True)
                if row[0] and (symbol not in self._parsed or self._parsed[symbol][0] != row[0])
            ]
            if changed:
                await self._parse_changed(changed, parsed)
            positions: dict[str, Position | MalformedRecord] = {}
            prices: dict[str, PriceTruth | MalformedRecord | None] = {}
            for symbol, (digest, *truth) in zip(part, rows, strict=True):
                if not digest:
                    positions[symbol] = _missing(symbol)
                else:
                    known = parsed.get(symbol) or self._parsed[symbol]
                    parsed[symbol] = known
                    positions[symbol] = known[1]
                prices[symbol] = self._price(symbol, dict(zip(TRUTH_FIELDS, truth, strict=True)))
            yield Snapshot(positions, prices, rev)
        # Forget what left: a set difference (a pass over every symbol held the loop for ms at 10,000).
        for symbol in self._ltps.keys() - parsed.keys():
            self._ltps.pop(symbol, None)
        self._parsed = parsed

    async def _parse_changed(
        self, changed: list[tuple[str, str]], parsed: dict[str, tuple[str, Position | MalformedRecord]]
    ) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol, _ in changed:
                pipe.hgetall(keys.position(symbol))
            rows = await pipe.execute()
        for (symbol, digest), row in zip(changed, rows, strict=True):
            try:
                position: Position | MalformedRecord = Position.from_redis(row or {"symbol": symbol})
            except MalformedRecord as exc:
                position = exc
            parsed[symbol] = (digest, position)

    def _price(self, symbol: str, values: dict[str, str | None]) -> PriceTruth | MalformedRecord | None:
        ltp = values["ltp"]
        if ltp is None and values["as_of"] is None:
            return None
        try:
            known = self._ltps.get(symbol)
            if known is not None and known[0] == ltp:
                paise = known[1]
            else:
                paise = ltp_paise(str(ltp))
                self._ltps[symbol] = (str(ltp), paise)
            return PriceTruth.from_fields(values, parsed_ltp=paise)
        except ValueError as exc:
            return MalformedRecord(f"price:{symbol}: {exc}")
