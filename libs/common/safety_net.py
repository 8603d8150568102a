"""Layer 0: a stop-loss kept at the broker (an Upstox GTT) under every guarded position.

The guide's three layers need this machine; a GTT lives at Upstox and fires with no client connected, so a
position stays protected when the whole guard is down. The GTT is a SINGLE rule in the closing direction
at the stop-loss moved out by `SAFETY_NET_BUFFER_PCT` (so the guard's own stop fires first while it lives).
Only the stop: exit legs of a MULTIPLE GTT arm only after its entry fills, so no one-cancels-other pair can
be built for a position that already exists; the take-profit stays the guard's job.

An F&O position is protected by several GTTs (its legs) when it is larger than the freeze quantity: a fired
GTT places one exchange order that nobody slices, so each leg is whole lots and at most the freeze quantity
(`libs.common.fno.order_legs`); all legs share the trigger. `net_gtt_id` and `net_quantity` hold the legs'
ids and quantities, comma-joined in the same order (one leg: one id, as before).

Its state lives in the position's hash (`net_*` fields, see `FIELDS`), written only by the scripts below:
- the monitor's keeper (`services.monitor.safety_net`) places, modifies and re-places it; every broker call
  it makes is bracketed by `net_busy`, so a closer can wait for a call in flight instead of missing a GTT;
- every close disarms it first (`SafetyNet.disarm`, called by `libs.common.closing` before any order and
  before calling a flat broker "external"): cancelled, it cannot sell too; found fired, its order is the
  close (`closed_by: "safety_net"`) or, unfilled (a gap), it is cancelled and the guard sells the rest.
No double exit: a GTT that cannot be cancelled, or whose order cannot be seen yet, stops the close
(BrokerError: nothing sent, retried like any failed close).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from loguru import logger
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError, BrokerOutcomeUnknown, Fill, UpstoxBroker
from libs.common.clock import Clock
from libs.common.feed_lease import FENCE_CHECK, FENCED
from libs.common.fno import order_legs
from libs.common.instruments import InstrumentIndex, guard_instruments
from libs.common.logging import tagged
from libs.common.models import CloseRecord, Position, Side
from libs.common.money import Paise, fmt_inr, rupees_str, to_paise
from libs.common.positions import with_rev
from libs.common.settings import Settings

# Fields of position:SYMBOL that belong to the safety net.
FIELDS = (
    "net_state",  # placing | active | retrying | unknown | fired | cancelled | ended | refused | none (no stop-loss)
    "net_gtt_id",  # the legs' GTT ids, comma-joined
    "net_trigger",  # rupee string of the legs' trigger ('' when not all legs are known to have it)
    "net_intent",  # rupee string of the trigger a call in flight (or one with an unknown outcome) asked for
    "net_quantity",  # the legs' quantities, comma-joined in the order of net_gtt_id
    "net_expires_at",  # epoch s
    "net_last_error",
    "net_attempts",
    "net_next_at",  # epoch s of the next attempt after a failure
    "net_busy",  # epoch s a keeper call to the broker began ('' when none is in flight)
    "net_order_id",  # the orders the GTTs placed when they fired, comma-joined
)
_GONE_CODES = ("UDAPI1134", "UDAPI1135")  # no such GTT / GTT no longer active
_FIRED = ("TRIGGERED", "COMPLETED", "FAILED", "OPEN")
_ENDED = ("CANCELLED", "EXPIRED")
_ORDER_WORKING = ("open", "trigger pending", "open pending", "validation pending", "put order req received")
_BUSY_POLL_S = 0.05
_BUSY_WAIT_CALLS = 4  # a closer waits for a keeper call of several legs at most this many broker timeouts

# Each script takes the record's next revision (`REV`, see libs/common/positions.py) when it writes.
# KEYS: position, revision counter. ARGV: now, intended trigger, then the keeper's lease key and fencing token
# (FENCE_CHECK: a keeper that lost the lease starts no call). Marks a keeper call in flight on an open position.
_BEGIN = (
    FENCE_CHECK
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return state or 'missing' end
local busy = redis.call('HGET', KEYS[1], 'net_busy')
if busy and busy ~= '' then return 'busy' end
redis.call('HSET', KEYS[1], 'net_busy', ARGV[1], 'net_intent', ARGV[2])
REV
return 'ok'
"""
)

# KEYS: position, revision counter. ARGV: now. Between two legs of one keeper call: refreshes the mark while the
# position is open.
_GOING_ON = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return state or 'missing' end
local busy = redis.call('HGET', KEYS[1], 'net_busy')
if not busy or busy == '' then return 'lost' end
redis.call('HSET', KEYS[1], 'net_busy', ARGV[1])
REV
return 'ok'
"""

# KEYS: position, revision counter. ARGV: field/value pairs. Records a call's result (the call is over); returns
# the state.
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'net_busy', '')
REV
return state
"""


# KEYS: position, revision counter. ARGV: the GTT id a disarm acted on ('' = none), then field/value pairs.
# Written only while the hash still names that GTT (or none): a closer that was stalled must not overwrite a
# newer GTT's state.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], 'net_gtt_id')
if current and current ~= '' and current ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
REV
return 1
"""


@dataclass(frozen=True, slots=True)
class NetState:
    """The safety net of one position as stored (and as the api shows it)."""

    state: str = ""
    gtt_id: str = ""
    trigger: Paise | None = None
    intent: Paise | None = None
    legs: tuple[int, ...] = ()  # the quantity of each GTT in `ids`
    expires_at: float | None = None
    last_error: str = ""
    attempts: int = 0
    next_at: float | None = None
    busy_since: float | None = None
    order_id: str = ""

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> NetState:
        def num(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value not in (None, "") else None

        def paise(name: str) -> Paise | None:
            value = data.get(name)
            return to_paise(value) if value not in (None, "") else None

        legs = str(data.get("net_quantity") or "")
        return cls(
            state=str(data.get("net_state") or ""),
            gtt_id=str(data.get("net_gtt_id") or ""),
            trigger=paise("net_trigger"),
            intent=paise("net_intent"),
            legs=tuple(int(q) for q in legs.split(",") if q.strip().isdigit()),
            expires_at=num("net_expires_at"),
            last_error=str(data.get("net_last_error") or ""),
            attempts=int(data.get("net_attempts") or 0),
            next_at=num("net_next_at"),
            busy_since=num("net_busy"),
            order_id=str(data.get("net_order_id") or ""),
        )

    @property
    def ids(self) -> tuple[str, ...]:
        """The GTT id of each leg."""
        return tuple(i for i in self.gtt_id.split(",") if i)

    def public(self) -> dict[str, Any]:
        """`{state, gtt_id, gtt_ids, quantities, trigger_price, last_error}` for the api (`gtt_id`: the first leg)."""
        return {
            "state": self.state or "placing",
            "gtt_id": self.ids[0] if self.ids else None,
            "gtt_ids": list(self.ids),
            "quantities": list(self.legs),
            "trigger_price": None if self.trigger is None else self.trigger / 100,
            "last_error": self.last_error or None,
        }


@dataclass(frozen=True, slots=True)
class Fired:
    """A GTT that fired: the order it placed, what that order filled, and whether that closes the position."""

    gtt_id: str  # comma-joined, one per leg
    order_id: str  # comma-joined: the orders the fired legs placed
    fill: Fill | None  # what those orders filled together
    complete: bool


def trigger_for(position: Position, buffer_pct: float, tick_paise: int) -> Paise | None:
    """The GTT trigger: the stop-loss moved out by `buffer_pct` (below a long's stop, above a short's), on the
    tick, away from the price. None when the position has no stop-loss."""
    if position.stop_loss is None:
        return None
    factor = Decimal(1) + Decimal(str(buffer_pct)) / 100 * (-1 if position.side is Side.LONG else 1)
    ticks = Decimal(position.stop_loss) * factor / tick_paise
    rounding = ROUND_FLOOR if position.side is Side.LONG else ROUND_CEILING
    return Paise(max(int(ticks.to_integral_value(rounding)) * tick_paise, tick_paise))


def closing_side(position: Position) -> str:
    return "SELL" if position.side is Side.LONG else "BUY"


class SafetyNet:
    """GTT calls, the stored state, and the disarm every close runs first."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        broker: UpstoxBroker,
        clock: Clock,
        instruments: InstrumentIndex | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._broker = broker
        self._clock = clock
        self._instruments = instruments or guard_instruments(settings, clock)  # lots and freeze quantities
        self._begin = redis.register_script(with_rev(_BEGIN))
        self._going_on = redis.register_script(with_rev(_GOING_ON))
        self._end = redis.register_script(with_rev(_END))
        self._settle = redis.register_script(with_rev(_SETTLE))

    # --- stored state --------------------------------------------------------------------------
    async def state(self, symbol: str) -> NetState:
        values = await self._redis.hmget(keys.position(symbol), list(FIELDS))
        return NetState.from_fields(dict(zip(FIELDS, values, strict=True)))

    async def states(self, symbols: list[str]) -> dict[str, NetState]:
        """The stored safety nets of `symbols`, one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hmget(keys.position(symbol), list(FIELDS))
            rows = await pipe.execute()
        return {s: NetState.from_fields(dict(zip(FIELDS, r, strict=True))) for s, r in zip(symbols, rows, strict=True)}

    async def begin(self, symbol: str, trigger: Paise, fence: tuple[str, str] = ("", "")) -> str:
        """Mark a keeper call in flight ('ok'), or say why not: the position's state, 'busy', or 'fenced' when
        `fence` (lease key, token) is not the keeper lease's current holder."""
        args = [repr(self._clock.now()), rupees_str(trigger), *fence]
        answer = await self._begin(keys=[keys.position(symbol), keys.POSITIONS_REV], args=args)
        return "fenced" if answer == FENCED else str(answer)

    async def going_on(self, symbol: str) -> str:
        """Between two legs of one call: 'ok' (the mark is refreshed), or the position's state once it is no
        longer open (a closer claimed it: place no further leg), or 'lost' (the mark was cleared)."""
        args = [repr(self._clock.now())]
        return str(await self._going_on(keys=[keys.position(symbol), keys.POSITIONS_REV], args=args))

    async def end(self, symbol: str, **fields: Any) -> str:
        """Record a call's result (`net_` is prefixed to each name) and clear `net_busy`; returns the position's
        state ('missing' when it is gone)."""
        args = [x for name, value in fields.items() for x in (f"net_{name}", "" if value is None else str(value))]
        return str(await self._end(keys=[keys.position(symbol), keys.POSITIONS_REV], args=args))

    async def settle(self, symbol: str, known_id: str, /, **fields: Any) -> bool:
        """Record what a disarm found (`net_` is prefixed to each name), unless the position names another GTT
        than `known_id` (the one it read) by now. False when nothing was written."""
        args = [x for name, value in fields.items() for x in (f"net_{name}", "" if value is None else str(value))]
        return bool(await self._settle(keys=[keys.position(symbol), keys.POSITIONS_REV], args=[known_id, *args]))

    # --- GTT calls -----------------------------------------------------------------------------
    def tick_of(self, instrument_key: str) -> int:
        inst = self._instruments.by_key(instrument_key)
        return inst.tick_size_paise if inst else 5

    def legs(self, position: Position) -> list[int]:
        """The GTT quantities that protect the position within its instrument's lot and freeze limits. Raises
        OverLimits when it cannot be protected by at most `MAX_SLICES` whole-lot GTTs."""
        inst = self._instruments.by_key(position.instrument_key)
        if inst is None:
            return [position.quantity]
        return order_legs(position.quantity, inst.lot_size, inst.freeze_quantity)

    async def place(self, position: Position, quantity: int, trigger: Paise) -> str:
        """Place one stop GTT of `quantity`; returns its id. Raises BrokerError (OrdersBlocked,
        BrokerOutcomeUnknown)."""
        body = {
            "type": "SINGLE",
            "quantity": quantity,
            "product": self._settings.order_product,
            "instrument_token": position.instrument_key,
            "transaction_type": closing_side(position),
            "rules": [_entry_rule(position, trigger)],
        }
        data = await self._gtt("POST", "/v3/order/gtt/place", json=body)
        try:
            return str(data["data"]["gtt_order_ids"][0])
        except (KeyError, IndexError, TypeError):
            raise BrokerError(f"unexpected GTT place response: {str(data)[:200]}") from None

    async def modify(self, gtt_id: str, position: Position, quantity: int, trigger: Paise) -> None:
        body = {
            "gtt_order_id": gtt_id,
            "type": "SINGLE",
            "quantity": quantity,
            "rules": [_entry_rule(position, trigger)],
        }
        await self._gtt("PUT", "/v3/order/gtt/modify", json=body)

    async def cancel(self, gtt_id: str) -> bool:
        """Cancel a GTT: True when cancelled now, False when the broker says it is no longer active (fired,
        cancelled, expired or gone: `inspect` tells which). Raises BrokerError when it cannot be asked."""
        try:
            await self._gtt("DELETE", "/v3/order/gtt/cancel", json={"gtt_order_id": gtt_id})
        except BrokerOutcomeUnknown as exc:  # asking again settles it: a cancelled GTT answers "not active"
            detail = str(exc).removesuffix("; the order may stand")
            raise BrokerError(f"cancel of GTT {gtt_id} had no clear answer ({detail})", status_code=503) from None
        except BrokerError as exc:
            if any(code in str(exc) for code in _GONE_CODES):
                return False
            raise
        return True

    async def live_gtts(self) -> dict[str, dict[str, Any]]:
        """Every GTT the broker still lists, by id (completed ones are not listed)."""
        data = await self._gtt("GET", "/v3/order/gtt")
        return {str(g.get("gtt_order_id")): g for g in data.get("data") or [] if isinstance(g, dict)}

    async def _gtt(self, method: str, path: str, **kw: Any) -> Any:
        return await self._broker.call(method, f"{self._settings.api_base}{path}", order_call=method != "GET", **kw)

    async def _order(self, order_id: str) -> dict[str, Any]:
        body = await self._broker.call(
            "GET", f"{self._settings.api_base}/v2/order/details", params={"order_id": order_id}
        )
        return dict(body.get("data") or {})

    async def inspect(self, gtt_id: str) -> tuple[str, dict[str, Any] | None]:
        """What became of a GTT: ("live", None), ("ended", None) (cancelled or expired, nothing placed), or
        ("fired", the order it placed). A GTT the broker no longer lists is found through the order book
        (`order_ref_id` = its id); none there means it ended without an order. Raises BrokerError, also when
        it fired and its order cannot be seen yet (ask again later)."""
        try:
            data = await self._gtt("GET", "/v3/order/gtt", params={"gtt_order_id": gtt_id})
            listed = [g for g in data.get("data") or [] if isinstance(g, dict)]
        except BrokerError as exc:
            if not any(code in str(exc) for code in _GONE_CODES):
                raise
            listed = []
        rules = listed[0].get("rules") or [] if listed else []
        rule = next((r for r in rules if r.get("strategy") == "ENTRY"), rules[0] if rules else {})
        status = str(rule.get("status") or "")
        if listed and status not in _FIRED:
            return ("ended", None) if status in _ENDED else ("live", None)
        if rule.get("order_id"):
            return "fired", await self._order(str(rule["order_id"]))
        book = await self._broker.call("GET", f"{self._settings.api_base}/v2/order/retrieve-all")
        orders = [o for o in book.get("data") or [] if o.get("order_ref_id") == gtt_id]
        if orders:
            return "fired", dict(orders[-1])
        if listed:  # TRIGGERED: the broker is sending its order right now
            raise BrokerError(f"GTT {gtt_id} fired and its order is not visible yet", status_code=503)
        return "ended", None

    async def find_strays(self, position: Position, trigger: Paise, known: tuple[str, ...]) -> list[tuple[str, int]]:
        """(id, quantity) of each live GTT at the broker, not among `known`, that a call with an unknown outcome
        may have placed for this position (same instrument, closing side and trigger)."""
        strays = []
        for gtt_id, gtt in (await self.live_gtts()).items():
            rules = gtt.get("rules") or []
            if (
                gtt_id not in known
                and gtt.get("instrument_token") == position.instrument_key
                and any(
                    r.get("status") in ("SCHEDULED", "PENDING")
                    and r.get("transaction_type") == closing_side(position)
                    and to_paise(r.get("trigger_price") or 0) == trigger
                    for r in rules
                )
            ):
                strays.append((gtt_id, int(gtt.get("quantity") or 0)))
        return strays

    # --- the disarm every close runs first -----------------------------------------------------
    async def disarm(self, position: Position) -> Fired | None:
        """Make sure none of the position's GTTs can sell too, before the guard sends anything.

        Returns None when no GTT can act any more (none, cancelled now or before, expired), or `Fired` when some
        fired: `complete` when their orders filled the whole position (that fill is the close), otherwise any of
        their orders still working was cancelled here (a gap) and the guard sells what is still held. Idempotent.
        Raises BrokerError (OrdersBlocked included) when that cannot be made sure: send nothing, retry.
        """
        net = await self._settled_state(position)
        if net.state == "cancelled" or (not net.ids and net.state != "unknown"):
            return None
        targets = net.ids
        if net.state == "unknown" and net.intent is not None:  # a place with an unknown outcome: what stands?
            targets += tuple(gtt_id for gtt_id, _ in await self.find_strays(position, net.intent, targets))
        joined = ",".join(targets)
        fired: list[tuple[str, dict[str, Any]]] = []
        for gtt_id in targets:
            if net.state != "fired" and await self.cancel(gtt_id):
                continue
            outcome, order = await self.inspect(gtt_id)
            if outcome == "live":  # not cancellable yet reported live: do not guess
                raise BrokerError(f"GTT {gtt_id} could not be cancelled and is still live", status_code=503)
            if order is not None:
                fired.append((gtt_id, order))
        if not fired:
            await self.settle(position.symbol, net.gtt_id, state="cancelled", gtt_id=joined)
            return None
        return await self._take_over(position, net.gtt_id, joined, fired)

    async def _settled_state(self, position: Position) -> NetState:
        """The stored state once no keeper call is in flight. A call refreshes its mark between legs; one whose
        mark is older than a broker timeout and a half is treated as an unknown outcome (and so is a wait beyond
        `_BUSY_WAIT_CALLS` such timeouts)."""
        stuck_s = self._settings.broker_timeout_s * 1.5
        deadline = self._clock.monotonic() + stuck_s * _BUSY_WAIT_CALLS
        while True:
            net = await self.state(position.symbol)
            if net.busy_since is None:
                return net
            if self._clock.now() - net.busy_since > stuck_s or self._clock.monotonic() > deadline:
                return replace(net, state="unknown", busy_since=None)
            await asyncio.sleep(_BUSY_POLL_S)

    async def _take_over(
        self, position: Position, known_id: str, joined: str, fired: list[tuple[str, dict[str, Any]]]
    ) -> Fired:
        quantity, value, order_ids, complete = 0, 0, [], True
        for gtt_id, placed in fired:
            order = await self._stop_working(position, gtt_id, placed)
            order_ids.append(str(order.get("order_id") or ""))
            filled = int(order.get("filled_quantity") or 0)
            price = order.get("average_price")
            if filled and price not in (None, "", 0):
                quantity += filled
                value += filled * to_paise(price)
            complete = complete and order.get("status") == "complete"
        order_id = ",".join(order_ids)
        fill = Fill(order_id, Paise(round(value / quantity)), quantity) if quantity else None
        await self.settle(position.symbol, known_id, state="fired", gtt_id=joined, order_id=order_id)
        return Fired(joined, order_id, fill, complete and quantity >= position.quantity)

    async def _stop_working(self, position: Position, gtt_id: str, order: dict[str, Any]) -> dict[str, Any]:
        """The fired GTT's order as it ends: one a gap left open is cancelled (the live guard takes over)."""
        order_id = str(order.get("order_id") or "")
        if str(order.get("status")) not in _ORDER_WORKING:
            return order
        try:
            await self._broker.call(
                "DELETE",
                f"{self._settings.order_base}/v3/order/cancel",
                order_call=True,
                params={"order_id": order_id},
            )
        except BrokerError as exc:
            if "UDAPI100040" not in str(exc):  # anything but "it ended meanwhile" (filled, say)
                raise
        order = await self._order(order_id)
        filled_now = f"{order.get('filled_quantity') or 0} of {order.get('quantity')}"
        logger.warning(
            f"{position.symbol}: the safety net's order {order_id} (GTT {gtt_id}) was not filled ({filled_now}); "
            "cancelled it, the guard closes the rest"
        )
        return order

    @staticmethod
    def announce(record: CloseRecord) -> None:
        """The `[SAFETY]` line of a position the broker's stop closed (its event is the `closed` event, whose
        record says `closed_by: "safety_net"`; the alerts service names it "Safety net closed SYMBOL")."""
        tagged("SAFETY").warning(
            f"{record.symbol}: closed by the safety net at the broker (order {record.order_id}): "
            f"{record.quantity} at {fmt_inr(record.exit_price)}, P&L {fmt_inr(record.pnl)}"
        )


def _entry_rule(position: Position, trigger: Paise) -> dict[str, Any]:
    return {
        "strategy": "ENTRY",
        "trigger_type": "BELOW" if position.side is Side.LONG else "ABOVE",
        "trigger_price": trigger / 100,
    }


def create_safety_net(settings: Settings, redis: Redis, broker: object, clock: Clock) -> SafetyNet | None:
    """The safety net when `SAFETY_NET=on` and the broker keeps GTTs (Upstox or the simulator), else None."""
    if settings.safety_net != "on" or not isinstance(broker, UpstoxBroker):
        return None
    return SafetyNet(settings, redis, broker, clock)
