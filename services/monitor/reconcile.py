"""Reconcile the guard's positions with the broker's, at start and every `RECONCILE_INTERVAL_S`.

A guarded position the broker no longer holds (closed in the Upstox app, by the bot, by the broker's
intraday square-off) is closed as `external` with no order; one the broker holds less of is guarded for
the remainder; a broker position no guard record covers is reported (`broker:unguarded`, shown in the api's
`/status`) and adopted only when `RECONCILE_ADOPT` asks (with the `RECONCILE_ADOPT_*_PCT` levels around its
average price). Only a fresh read acts, and only on positions registered before that read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.broker import Broker, BrokerError, Holding
from libs.common.broker_positions import BrokerPositions, PositionsUnavailable, Snapshot
from libs.common.clock import Clock
from libs.common.closing import Closer
from libs.common.models import MalformedRecord, Position, PositionState, Side, level_at_pct
from libs.common.money import fmt_inr
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore
from libs.common.settings import Settings
from services.monitor.snapshot import SLICE


class BrokerReconciler:
    """Compares every guarded position with the broker's positions and acts on the difference."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        store: PositionStore,
        closer: Closer,
        holdings: BrokerPositions,
        broker: Broker,
        clock: Clock,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._redis = redis
        self._store = store
        self._closer = closer
        self._holdings = holdings
        self._clock = clock
        self._unreadable_logged = False

    async def run(self) -> None:
        """Reconcile now and then every RECONCILE_INTERVAL_S until cancelled; a failed round is logged."""
        while True:
            try:
                await self._broker.remember_hosts()  # the order host too, before any order needs it
                await self.once()
            except (RedisError, OSError) as exc:
                logger.warning(f"Reconcile with the broker skipped: Redis unreachable ({type(exc).__name__})")
            except Exception:
                logger.exception("Reconcile with the broker failed; the next one runs as scheduled")
            await asyncio.sleep(self._settings.reconcile_interval_s)

    async def once(self) -> dict[str, int]:
        """One round. Returns counts: closed_external, reduced, unguarded (and adopted with RECONCILE_ADOPT)."""
        counts = {"closed_external": 0, "reduced": 0, "unguarded": 0}
        try:
            snapshot = await self._holdings.read()
        except PositionsUnavailable as exc:
            if not self._unreadable_logged:
                logger.warning(f"Reconcile with the broker skipped: {exc}")
                self._unreadable_logged = True
            return counts
        if snapshot is None or not snapshot.fresh:  # paper broker, or only an old snapshot: nothing to act on
            return counts
        self._unreadable_logged = False
        product = self._settings.order_product
        guarded: set[str] = set()
        symbols = await self._store.open_symbols()
        items: list[Position | MalformedRecord] = []
        # Read in slices: the tick path shares this event loop, and one read of 10,000 records held it for hundreds
        # of ms (packing, parsing, validating every record in one turn).
        for start in range(0, len(symbols), SLICE):
            items += await self._store.read_many(symbols[start : start + SLICE])
        for item in items:
            if not isinstance(item, Position):
                continue
            guarded.add(item.instrument_key)
            if item.state is not PositionState.OPEN or item.opened_at >= snapshot.as_of:
                continue
            held = snapshot.held(item.instrument_key, product, item.side)
            if held == 0:
                counts["closed_external"] += await self._closed_outside(item, snapshot)
            elif held < item.quantity and (rev := await self._store.reduce(item.symbol, held)):
                counts["reduced"] += 1
                logger.warning(
                    f"{item.symbol}: the broker holds {held} of the {item.quantity} guarded ({item.side}); "
                    f"guarding the remainder {held}"
                )
                await self._store.publish_event("reduced", item.symbol, quantity=held, was=item.quantity, rev=rev)
        loose = [h for h in snapshot.holdings if h.quantity != 0 and h.instrument_key not in guarded]
        if self._settings.reconcile_adopt:
            adopted = [h for h in loose if await self._adopt(h)]
            counts["adopted"] = len(adopted)
            loose = [h for h in loose if h not in adopted]
        unguarded = [_listed(h) for h in loose]
        counts["unguarded"] = len(unguarded)
        await self._report_unguarded(unguarded, snapshot.as_of)
        return counts

    async def _adopt(self, holding: Holding) -> bool:
        """Guard a broker position nobody registered (RECONCILE_ADOPT), around its average price."""
        entry = holding.average_price or holding.last_price
        if holding.product != self._settings.order_product or not holding.trading_symbol or not entry:
            return False
        side = Side.LONG if holding.quantity > 0 else Side.SHORT
        s = self._settings
        stop_loss = level_at_pct(entry, side, s.reconcile_adopt_stop_loss_pct, stop=True)
        take_profit = level_at_pct(entry, side, s.reconcile_adopt_take_profit_pct, stop=False)
        try:
            position = Position(
                symbol=holding.trading_symbol,
                instrument_key=holding.instrument_key,
                side=side,
                quantity=abs(holding.quantity),
                entry_price=entry,
                stop_loss=stop_loss,
                take_profit=take_profit,
                opened_at=self._clock.now(),
            )
            await self._store.open(position)
        except (ValueError, PositionConflict) as exc:
            logger.warning(f"Could not adopt the broker position {holding.trading_symbol}: {exc}")
            return False
        logger.warning(
            f"Adopted the broker position {position.symbol}: {side} {position.quantity} @ {fmt_inr(entry)}, "
            f"SL {fmt_inr(stop_loss)}, TP {fmt_inr(take_profit)} (RECONCILE_ADOPT)"
        )
        return True

    async def _closed_outside(self, position: Position, snapshot: Snapshot) -> int:
        try:
            await self._closer.close_external(position.symbol)
        except (PositionConflict, PositionNotFound):
            return 0  # a close of ours got there first
        except BrokerError as exc:
            logger.error(f"Reconcile could not settle {position.symbol}: {exc}")
            return 0
        net = snapshot.describe(position.instrument_key, self._settings.order_product)
        logger.warning(f"Reconcile: {position.symbol} closed outside the guard (the broker holds {net})")
        return 1

    async def _report_unguarded(self, rows: list[dict[str, Any]], as_of: float) -> None:
        previous = await self._redis.get(keys.BROKER_UNGUARDED)
        payload = json.dumps({"as_of": as_of, "positions": rows})
        await self._redis.set(keys.BROKER_UNGUARDED, payload)
        before = json.loads(previous)["positions"] if previous else []
        if rows and rows != before:
            listed = ", ".join(f"{r['symbol'] or r['instrument_key']} {r['quantity']} ({r['product']})" for r in rows)
            logger.warning(f"Broker positions with no guard (not adopted; register them to protect them): {listed}")


def _listed(holding: Holding) -> dict[str, Any]:
    return {
        "symbol": holding.trading_symbol,
        "instrument_key": holding.instrument_key,
        "product": holding.product,
        "quantity": holding.quantity,
    }
