"""What the broker holds: a read of its day positions, shared as a snapshot in Redis.

The closer reads it before every close order (never sell more than is held), the api before registering a
position, the reconcile every `RECONCILE_INTERVAL_S`. Every good read is kept in `broker:positions` so a
moment when the broker cannot be asked is decided from the last snapshot not older than
`BROKER_POSITIONS_MAX_AGE_S`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.broker import Broker, BrokerError, Holding
from libs.common.clock import Clock
from libs.common.models import Side


class PositionsUnavailable(Exception):
    """Neither the broker nor a recent enough snapshot can say what is held."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The broker's positions as of `as_of` (epoch s); `fresh` when just read from the broker."""

    holdings: list[Holding]
    as_of: float
    fresh: bool

    def net(self, instrument_key: str, product: str) -> int:
        """Net quantity of the instrument in `product` (negative: short); 0 when not listed."""
        return sum(h.quantity for h in self.holdings if h.instrument_key == instrument_key and h.product == product)

    def held(self, instrument_key: str, product: str, side: Side) -> int:
        """Units held in the direction of `side` (a long needs a positive net, a short a negative one), >= 0."""
        net = self.net(instrument_key, product)
        return max(net, 0) if side is Side.LONG else max(-net, 0)

    def describe(self, instrument_key: str, product: str) -> str:
        """What the broker holds of the instrument, in words for a 409 or a log line."""
        net = self.net(instrument_key, product)
        if net == 0:
            return f"nothing (flat) in product {product}"
        return f"{abs(net)} {'long' if net > 0 else 'short'} in product {product}"


class BrokerPositions:
    """Reads the broker's positions and keeps the last good read in Redis."""

    def __init__(self, redis: Redis, broker: Broker, clock: Clock, *, max_age_s: float) -> None:
        self._redis = redis
        self._broker = broker
        self._clock = clock
        self._max_age_s = max_age_s

    async def read(self) -> Snapshot | None:
        """A fresh read, else the last snapshot not older than the max age. None when the broker keeps no
        positions (paper). Raises PositionsUnavailable (with the reason) when neither is there."""
        try:
            holdings = await self._broker.positions()
        except BrokerError as exc:
            return await self._recent(str(exc))
        if holdings is None:
            return None
        snapshot = Snapshot(holdings, self._clock.now(), fresh=True)
        payload = json.dumps({"as_of": snapshot.as_of, "holdings": [asdict(h) for h in holdings]})
        try:
            await self._redis.set(keys.BROKER_POSITIONS, payload)
        except RedisError as exc:
            logger.warning(f"Could not keep the broker positions snapshot: {type(exc).__name__}")
        return snapshot

    async def _recent(self, reason: str) -> Snapshot:
        try:
            raw = await self._redis.get(keys.BROKER_POSITIONS)
        except RedisError:
            raw = None
        if raw:
            try:
                data = json.loads(raw)
                snapshot = Snapshot([Holding(**h) for h in data["holdings"]], float(data["as_of"]), fresh=False)
            except (ValueError, KeyError, TypeError):
                snapshot = None
            if snapshot is not None and self._clock.now() - snapshot.as_of <= self._max_age_s:
                return snapshot
        raise PositionsUnavailable(
            f"broker positions unreadable ({reason}) and no snapshot within {self._max_age_s:g}s"
        )
