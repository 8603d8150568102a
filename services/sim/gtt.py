"""The simulated broker's GTT (good-till-triggered) orders, kept and fired on the simulator's own market.

Upstox keeps GTTs on its side and fires them with no client connected; so does this book: it watches
every market step (and every segment status change), whoever is connected. Shapes and rules follow
`POST /v3/order/gtt/place`, `PUT /v3/order/gtt/modify`, `DELETE /v3/order/gtt/cancel`, `GET /v3/order/gtt`:

- SINGLE: one ENTRY rule, `trigger_type` ABOVE or BELOW (the price must not already be past it) or IMMEDIATE.
- MULTIPLE: an ENTRY plus TARGET and/or STOPLOSS (IMMEDIATE, at their trigger prices); the exit legs arm
  only once the ENTRY's order has filled completely, and the first exit leg to fire cancels the other.
- On trigger a LIMIT order goes to the order book at the trigger price moved by `LIMIT_BUFFER_PCT` in the
  order's favour (Upstox's own price-protection buffer): it fills when the market allows, and a gap through
  the limit leaves it open. The order carries `order_ref_id` = the GTT's id; the rule carries the `order_id`.
  The exchange checks that order like any other (`OrderBook.place_internal`): nothing slices it, so a GTT over
  the freeze quantity fires into a `rejected` order and its rule ends FAILED.
- A rule whose order was placed is COMPLETED (the exchange acknowledged it); a GTT with nothing left to do
  is no longer returned by `GET /v3/order/gtt` (as at Upstox). `GET /sim/gtt` lists every one with history.
- Intraday (`I`) GTTs expire at the end of the IST day they were made, others after a year.
Money is integer paise inside; timestamps on the wire are epoch microseconds, as Upstox sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from libs.common.clock import Clock, to_ist
from libs.common.instruments import Instrument
from libs.common.money import Paise, rupees, rupees_str
from services.sim import errors
from services.sim.errors import UpstoxError
from services.sim.market import Market
from services.sim.orders import Order, OrderBook

LIMIT_BUFFER_PCT = 1.0
MAX_RULES = 3
TYPES = ("SINGLE", "MULTIPLE")
STRATEGIES = ("ENTRY", "TARGET", "STOPLOSS")
TRIGGER_TYPES = ("ABOVE", "BELOW", "IMMEDIATE")
PRODUCTS = ("I", "D", "MTF")
INVALID_GTT_ID = "UDAPI1134"
GTT_NOT_ACTIVE = "UDAPI1135"
NO_ENTRY_RULE = "UDAPI1141"
RULE_COUNT = "UDAPI1136"
_LIVE = ("SCHEDULED", "PENDING")  # waiting for a trigger (PENDING: an exit leg not armed yet)
_EXPIRY_CHECK_S = 1.0


def _bad(message: str, path: str, value: Any = None, code: str = errors.INVALID_INPUT) -> UpstoxError:
    return UpstoxError(400, code, message, path, value)


def _us(epoch_s: float) -> int:
    return int(epoch_s * 1_000_000)


@dataclass
class Rule:
    strategy: str
    trigger_type: str
    trigger_paise: Paise
    transaction_type: str
    status: str = "SCHEDULED"
    message: str | None = None
    order_id: str | None = None
    trailing_gap: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "status": self.status,
            "message": self.message,
            "trigger_type": self.trigger_type,
            "trigger_price": rupees(self.trigger_paise),
            "transaction_type": self.transaction_type,
            "order_id": self.order_id,
            "trailing_gap": self.trailing_gap,
        }


@dataclass
class Gtt:
    """One GTT as the broker keeps it; `as_dict()` is Upstox's GTT-details shape."""

    gtt_order_id: str
    type: str
    instrument: Instrument
    product: str
    quantity: int
    rules: list[Rule]
    created_at: float
    expires_at: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        """Some rule may still fire."""
        return any(r.status in _LIVE for r in self.rules)

    @property
    def done(self) -> bool:
        """Fired and finished: no longer returned by `GET /v3/order/gtt` (as at Upstox)."""
        return not self.live and any(r.status == "COMPLETED" for r in self.rules)

    def rule(self, strategy: str) -> Rule | None:
        return next((r for r in self.rules if r.strategy == strategy), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "exchange": self.instrument.segment,
            "quantity": self.quantity,
            "product": self.product,
            "gtt_order_id": self.gtt_order_id,
            "instrument_token": self.instrument.instrument_key,
            "trading_symbol": self.instrument.trading_symbol,
            "expires_at": _us(self.expires_at),
            "created_at": _us(self.created_at),
            "rules": [r.as_dict() for r in self.rules],
        }


class GttBook:
    """The (single) simulated user's GTTs, evaluated on `market` and fired into `orders`."""

    def __init__(self, market: Market, orders: OrderBook, clock: Clock) -> None:
        self.market = market
        self.orders = orders
        self.clock = clock
        self.gtts: dict[str, Gtt] = {}
        self.calls = 0  # GTT calls received (counted by the app)
        self._seq = 0
        self._expiry_checked_at = 0.0
        market.listeners.append(self._on_ticks)
        market.status_listeners.append(self._on_status)

    def reset(self) -> None:
        self.gtts.clear()
        self.calls = 0
        self._seq = 0

    # --- the four calls ------------------------------------------------------------------------
    def place(self, body: Any) -> Gtt:
        """Validate and keep a new GTT (`POST /v3/order/gtt/place`); IMMEDIATE entries fire at once."""
        if not isinstance(body, dict):
            raise _bad("Request body must be a JSON object", "body")
        key = body.get("instrument_token")
        idx = self.market.index.get(key) if isinstance(key, str) else None
        if idx is None:
            raise _bad("Invalid instrument_token", "instrument_token", key)
        inst = self.market.instruments[idx]
        if inst.is_index:
            raise _bad("Indices cannot be traded", "instrument_token", key)
        if body.get("product") not in PRODUCTS:
            raise _bad(f"product must be one of {', '.join(PRODUCTS)}", "product", body.get("product"))
        side = body.get("transaction_type")
        if side not in ("BUY", "SELL"):
            raise _bad("transaction_type must be BUY or SELL", "transaction_type", side)
        kind, quantity, rules = self._validate_rules(body, inst, str(side))
        now = self.clock.now()
        self._seq += 1
        day = to_ist(now)
        gtt = Gtt(
            gtt_order_id=f"GTT-CU{day:%y}{day.timetuple().tm_yday:03d}{self._seq:09d}",
            type=kind,
            instrument=inst,
            product=str(body["product"]),
            quantity=quantity,
            rules=rules,
            created_at=now,
            expires_at=_expiry(now, str(body["product"])),
        )
        self.gtts[gtt.gtt_order_id] = gtt
        self._record(gtt, "placed")
        self._evaluate(gtt)
        return gtt

    def modify(self, body: Any) -> Gtt:
        """Change a waiting GTT's quantity and rules (`PUT /v3/order/gtt/modify`)."""
        gtt = self._active(body)
        entry = gtt.rule("ENTRY")
        side = entry.transaction_type if entry else "SELL"
        kind, quantity, rules = self._validate_rules(body, gtt.instrument, side)
        if kind != gtt.type:
            raise _bad("type cannot be changed", "type", kind)
        gtt.quantity = quantity
        gtt.rules = rules
        self._record(gtt, "modified")
        self._evaluate(gtt)
        return gtt

    def cancel(self, body: Any) -> Gtt:
        """Cancel every rule of a waiting GTT (`DELETE /v3/order/gtt/cancel`)."""
        gtt = self._active(body)
        for rule in gtt.rules:
            if rule.status in _LIVE:
                rule.status = "CANCELLED"
                rule.message = "Cancelled by user"
        self._record(gtt, "cancelled")
        return gtt

    def listed(self, gtt_order_id: str | None) -> list[dict[str, Any]]:
        """`GET /v3/order/gtt`: one GTT, or every one; completed GTTs are not returned (400 when asked by id)."""
        if gtt_order_id:
            gtt = self.gtts.get(gtt_order_id)
            if gtt is None or gtt.done:
                raise _bad("Invalid GTT order id", "gtt_order_id", gtt_order_id, INVALID_GTT_ID)
            return [gtt.as_dict()]
        return [g.as_dict() for g in self.gtts.values() if not g.done]

    def everything(self) -> list[dict[str, Any]]:
        """Every GTT ever made (completed ones included), each with its history (`GET /sim/gtt`)."""
        return [{**g.as_dict(), "live": g.live, "history": list(g.history)} for g in self.gtts.values()]

    # --- validation ----------------------------------------------------------------------------
    def _active(self, body: Any) -> Gtt:
        gtt_id = body.get("gtt_order_id") if isinstance(body, dict) else None
        gtt = self.gtts.get(gtt_id) if isinstance(gtt_id, str) else None
        if gtt is None:
            raise _bad("Invalid GTT order id", "gtt_order_id", gtt_id, INVALID_GTT_ID)
        self._expire_due()
        if not gtt.live or any(r.status not in _LIVE for r in gtt.rules if r.strategy == "ENTRY"):
            state = ", ".join(f"{r.strategy} {r.status}" for r in gtt.rules)
            raise _bad(f"GTT order {gtt_id} can no longer be changed ({state})", "gtt_order_id", gtt_id, GTT_NOT_ACTIVE)
        return gtt

    def _validate_rules(self, body: dict[str, Any], inst: Instrument, side: str) -> tuple[str, int, list[Rule]]:
        kind = body.get("type")
        if kind not in TYPES:
            raise _bad("type must be SINGLE or MULTIPLE", "type", kind)
        quantity = body.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise _bad("quantity must be an integer >= 1", "quantity", quantity)
        if quantity % inst.lot_size:
            raise _bad(f"quantity must be a multiple of the lot size {inst.lot_size}", "quantity", quantity)
        raw = body.get("rules")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_RULES:
            raise _bad(f"rules must hold 1 to {MAX_RULES} rules", "rules", None, RULE_COUNT)
        if kind == "SINGLE" and len(raw) != 1:
            raise _bad("a SINGLE GTT has exactly one rule", "rules", None, RULE_COUNT)
        if kind == "MULTIPLE" and len(raw) < 2:
            raise _bad("a MULTIPLE GTT has an ENTRY and at least one exit rule", "rules", None, RULE_COUNT)
        exit_side = "BUY" if side == "SELL" else "SELL"
        rules = [self._rule(r, i, inst, side, exit_side) for i, r in enumerate(raw)]
        strategies = [r.strategy for r in rules]
        if len(set(strategies)) != len(strategies):
            raise _bad("rules must not repeat a strategy", "rules", strategies)
        if "ENTRY" not in strategies:
            raise _bad("an ENTRY rule is required", "rules", strategies, NO_ENTRY_RULE)
        ltp = self.market.ltp_paise(inst.instrument_key) or Paise(0)
        for rule in rules:
            if rule.strategy != "ENTRY":
                if rule.trigger_type != "IMMEDIATE":
                    raise _bad(f"{rule.strategy} rules must be IMMEDIATE", "rules.trigger_type", rule.trigger_type)
                rule.status = "PENDING"  # armed once the entry fills
            elif rule.trigger_type == "ABOVE" and rule.trigger_paise <= ltp:
                raise _bad(f"trigger_price must be above the last price {rupees_str(ltp)} for ABOVE",
                           "rules.trigger_price", rupees(rule.trigger_paise))  # fmt: skip
            elif rule.trigger_type == "BELOW" and rule.trigger_paise >= ltp:
                raise _bad(f"trigger_price must be below the last price {rupees_str(ltp)} for BELOW",
                           "rules.trigger_price", rupees(rule.trigger_paise))  # fmt: skip
        rules.sort(key=lambda r: STRATEGIES.index(r.strategy))
        return str(kind), quantity, rules

    @staticmethod
    def _rule(raw: Any, i: int, inst: Instrument, side: str, exit_side: str) -> Rule:
        path = f"rules[{i}]"
        if not isinstance(raw, dict):
            raise _bad("each rule must be an object", path)
        strategy = raw.get("strategy")
        if strategy not in STRATEGIES:
            raise _bad("strategy must be ENTRY, TARGET or STOPLOSS", f"{path}.strategy", strategy)
        trigger_type = raw.get("trigger_type")
        if trigger_type not in TRIGGER_TYPES:
            raise _bad("trigger_type must be ABOVE, BELOW or IMMEDIATE", f"{path}.trigger_type", trigger_type)
        price = raw.get("trigger_price")
        if isinstance(price, bool) or not isinstance(price, int | float) or price <= 0:
            raise _bad("trigger_price must be a number > 0", f"{path}.trigger_price", price)
        paise = Paise(round(price * 100))
        if abs(paise - price * 100) > 1e-6 or paise % inst.tick_size_paise:
            raise _bad(f"trigger_price must be a multiple of the tick size {rupees_str(inst.tick_size_paise)}",
                       f"{path}.trigger_price", price)  # fmt: skip
        low, high = inst.band_paise
        if not low <= paise <= high:
            raise _bad(f"trigger_price is outside the day's band {rupees_str(low)}-{rupees_str(high)}",
                       f"{path}.trigger_price", price)  # fmt: skip
        gap = raw.get("trailing_gap")
        if gap is not None and (strategy != "STOPLOSS" or isinstance(gap, bool) or not isinstance(gap, int | float)):
            raise _bad("trailing_gap is a number, on a STOPLOSS rule only", f"{path}.trailing_gap", gap)
        return Rule(
            strategy=str(strategy),
            trigger_type=str(trigger_type),
            trigger_paise=paise,
            transaction_type=side if strategy == "ENTRY" else exit_side,
            trailing_gap=float(gap) if gap is not None else None,
        )

    # --- firing --------------------------------------------------------------------------------
    def _on_ticks(self, changed: list[int]) -> None:
        self._expire_due()
        if not any(g.live for g in self.gtts.values()):
            return
        keys = {self.market.instruments[i].instrument_key for i in changed}
        for gtt in list(self.gtts.values()):
            if gtt.live and gtt.instrument.instrument_key in keys:
                self._evaluate(gtt)

    def _on_status(self) -> None:
        # A price that crossed while the segment was closed fires when it opens.
        for gtt in list(self.gtts.values()):
            if gtt.live:
                self._evaluate(gtt)

    def _expire_due(self) -> None:
        now = self.clock.now()
        if now - self._expiry_checked_at < _EXPIRY_CHECK_S and now >= self._expiry_checked_at:
            return
        self._expiry_checked_at = now
        for gtt in self.gtts.values():
            if gtt.live and now >= gtt.expires_at:
                for rule in gtt.rules:
                    if rule.status in _LIVE:
                        rule.status = "EXPIRED"
                self._record(gtt, "expired")

    def _evaluate(self, gtt: Gtt) -> None:
        inst = gtt.instrument
        if not self.market.is_open(inst.segment):
            return
        ltp = self.market.ltp_paise(inst.instrument_key)
        if ltp is None:
            return
        entry = gtt.rule("ENTRY")
        if entry is not None and entry.status == "SCHEDULED":
            if _crossed(entry, ltp):
                self._fire(gtt, entry)
            return
        self._arm_exits(gtt)
        for rule in gtt.rules:
            if rule.strategy != "ENTRY" and rule.status == "SCHEDULED" and _exit_crossed(rule, ltp):
                self._fire(gtt, rule)
                for other in gtt.rules:  # one cancels the other
                    if other is not rule and other.status in _LIVE:
                        other.status = "CANCELLED"
                        other.message = f"{rule.strategy} triggered"
                self._record(gtt, "exit leg fired")
                return

    def _arm_exits(self, gtt: Gtt) -> None:
        entry = gtt.rule("ENTRY")
        order = self.orders.orders.get(entry.order_id or "") if entry else None
        if order is None or order.status != "complete" or order.filled_quantity < gtt.quantity:
            return
        armed = False
        for rule in gtt.rules:
            if rule.status == "PENDING":
                rule.status = "SCHEDULED"
                armed = True
        if armed:
            self._record(gtt, "exit legs armed (entry filled)")

    def _fire(self, gtt: Gtt, rule: Rule) -> None:
        rule.status = "TRIGGERED"
        self._record(gtt, f"{rule.strategy} triggered")
        order = self.orders.place_internal(
            gtt.instrument,
            transaction_type=rule.transaction_type,
            quantity=gtt.quantity,
            product=gtt.product,
            price_paise=self._limit_price(gtt.instrument, rule),
            ref_id=gtt.gtt_order_id,
        )
        rule.order_id = order.order_id
        if order.status == "rejected":
            rule.status = "FAILED"
            rule.message = order.status_message
        else:
            rule.status = "COMPLETED"
        self._record(gtt, f"{rule.strategy} order {order.order_id} {order.status}", order)

    def _limit_price(self, inst: Instrument, rule: Rule) -> Paise:
        """The trigger moved by the buffer in the order's favour, on the tick, inside the band."""
        if rule.trigger_type == "IMMEDIATE" and rule.strategy == "ENTRY":
            return rule.trigger_paise
        tick = inst.tick_size_paise
        buffer = rule.trigger_paise * LIMIT_BUFFER_PCT / 100
        low, high = inst.band_paise
        if rule.transaction_type == "SELL":
            price = int((rule.trigger_paise - buffer) // tick * tick)
        else:
            price = int(-(-(rule.trigger_paise + buffer) // tick) * tick)
        return Paise(min(max(price, low), high))

    def _record(self, gtt: Gtt, what: str, order: Order | None = None) -> None:
        entry: dict[str, Any] = {"at": _us(self.clock.now()), "event": what, "rules": [r.as_dict() for r in gtt.rules]}
        if order is not None:
            entry["order"] = {"order_id": order.order_id, "status": order.status, "price": rupees(order.price_paise)}
        gtt.history.append(entry)


def _crossed(rule: Rule, ltp: int) -> bool:
    if rule.trigger_type == "IMMEDIATE":
        return True
    return ltp >= rule.trigger_paise if rule.trigger_type == "ABOVE" else ltp <= rule.trigger_paise


def _exit_crossed(rule: Rule, ltp: int) -> bool:
    """An exit leg of a BUY entry: TARGET above, STOPLOSS below (mirrored for a SELL entry)."""
    sell_exit = rule.transaction_type == "SELL"
    if rule.strategy == "TARGET":
        return ltp >= rule.trigger_paise if sell_exit else ltp <= rule.trigger_paise
    return ltp <= rule.trigger_paise if sell_exit else ltp >= rule.trigger_paise


def _expiry(now: float, product: str) -> float:
    if product != "I":
        return now + 365 * 86400
    day = to_ist(now)
    end = day.replace(hour=23, minute=59, second=59, microsecond=0)
    return (end if end > day else end + timedelta(days=1)).timestamp()
