"""The simulated order book: validation, fills, positions and the order rate limit.

MARKET orders fill at once at the current price. LIMIT orders fill at the current price when marketable,
else rest `open` until the price crosses; SL / SL-M rest `trigger pending` until the trigger is crossed.
Prices outside the day's band are rejected the way the exchange does it (status `rejected` with a
message); malformed requests get a 400 envelope. Money is integer paise inside.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from libs.common.clock import Clock, to_ist
from libs.common.instruments import Instrument
from libs.common.money import rupees, rupees_str
from services.sim import errors
from services.sim.errors import UpstoxError
from services.sim.market import Market

ORDER_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
VALIDITIES = ("DAY", "IOC")
PRODUCTS_V2 = ("I", "D", "CO", "MTF")
PRODUCTS_V3 = ("I", "D", "MTF")
TRANSACTION_TYPES = ("BUY", "SELL")
MAX_TAG_LEN = 40
MAX_SLICES = 25


@dataclass
class Order:
    """One order as the book keeps it; `as_dict()` is Upstox's order-details shape."""

    order_id: str
    instrument: Instrument
    transaction_type: str
    order_type: str
    product: str
    validity: str
    quantity: int
    price_paise: int
    trigger_paise: int
    disclosed_quantity: int
    is_amo: bool
    tag: str | None
    placed_at: float
    status: str = "open"
    status_message: str | None = None
    filled_quantity: int = 0
    average_paise: int = 0
    exchange_order_id: str = ""
    updated_at: float = 0.0
    history: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        sym = self.instrument.trading_symbol
        placed = to_ist(self.placed_at).strftime("%Y-%m-%d %H:%M:%S")
        updated = to_ist(self.updated_at or self.placed_at).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "exchange": self.instrument.exchange,
            "product": self.product,
            "price": rupees(self.price_paise),
            "quantity": self.quantity,
            "status": self.status,
            "tag": self.tag,
            "instrument_token": self.instrument.instrument_key,
            "placed_by": "SIMUSER",
            "trading_symbol": sym,
            "tradingsymbol": sym,
            "order_type": self.order_type,
            "validity": self.validity,
            "trigger_price": rupees(self.trigger_paise),
            "disclosed_quantity": self.disclosed_quantity,
            "transaction_type": self.transaction_type,
            "average_price": rupees(self.average_paise),
            "filled_quantity": self.filled_quantity,
            "pending_quantity": self.quantity - self.filled_quantity if self.status in _WORKING else 0,
            "status_message": self.status_message,
            "status_message_raw": self.status_message,
            "exchange_order_id": self.exchange_order_id or None,
            "parent_order_id": None,
            "order_id": self.order_id,
            "variety": "AMO" if self.is_amo else "SIMPLE",
            "order_timestamp": placed,
            "exchange_timestamp": updated if self.exchange_order_id else None,
            "is_amo": self.is_amo,
            "order_request_id": "1",
            "order_ref_id": self.tag or "",
        }


_WORKING = ("open", "trigger pending", "after market order req received")


@dataclass
class _Position:
    instrument: Instrument
    product: str
    buy_qty: int = 0
    buy_value: int = 0  # paise
    sell_qty: int = 0
    sell_value: int = 0


class RateLimiter:
    """At most `per_s` events per key in any rolling second (0 = unlimited); real monotonic time."""

    def __init__(self, per_s: int) -> None:
        self.per_s = per_s
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        if self.per_s <= 0:
            return True
        now = time.monotonic()
        window = self._events.setdefault(key, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= self.per_s:
            return False
        window.append(now)
        return True

    def clear(self) -> None:
        self._events.clear()


class OrderBook:
    """Orders and positions of the (single) simulated user."""

    def __init__(self, market: Market, clock: Clock, *, rate_limit_per_s: int = 10) -> None:
        self.market = market
        self.clock = clock
        self.limiter = RateLimiter(rate_limit_per_s)
        self.orders: dict[str, Order] = {}
        self.positions: dict[tuple[str, str], _Position] = {}  # (instrument_key, product); squared-off stay
        self._seq = 0
        self._exchange_seq = 0
        market.listeners.append(self._on_ticks)

    def reset(self) -> None:
        self.orders.clear()
        self.positions.clear()
        self.limiter.clear()
        self._seq = 0
        self._exchange_seq = 0

    # --- placing -------------------------------------------------------------------------------
    def check_rate(self, token_key: str) -> None:
        """Raise 429 UDAPI10005 when this token placed `rate_limit_per_s` orders in the last second."""
        if not self.limiter.allow(token_key):
            raise errors.rate_limited()

    def place(self, body: Any, *, version: int) -> list[Order]:
        """Validate a place-order body (v2 or v3) and book it; one order, or several when v3 slices."""
        req = _validate(body, version=version, market=self.market)
        inst: Instrument = req["instrument"]
        quantities = [req["quantity"]]
        if version == 3 and req["slice"] and req["quantity"] > inst.freeze_quantity:
            freeze = int(inst.freeze_quantity)
            count = -(-req["quantity"] // freeze)
            if count > MAX_SLICES:
                raise UpstoxError(
                    400, errors.INVALID_INPUT, f"Slicing would create more than {MAX_SLICES} orders", "quantity"
                )
            quantities = [freeze] * (count - 1) + [req["quantity"] - freeze * (count - 1)]
        placed = []
        for qty in quantities:
            order = Order(
                order_id=self._next_id(),
                instrument=inst,
                transaction_type=req["transaction_type"],
                order_type=req["order_type"],
                product=req["product"],
                validity=req["validity"],
                quantity=qty,
                price_paise=req["price_paise"],
                trigger_paise=req["trigger_paise"],
                disclosed_quantity=req["disclosed_quantity"],
                is_amo=req["is_amo"],
                tag=req["tag"],
                placed_at=self.clock.now(),
            )
            self.orders[order.order_id] = order
            self._accept(order)
            placed.append(order)
        return placed

    def trade(self, symbol: str, side: str, quantity: int, product: str = "I") -> Order:
        """A MARKET order made outside the guard (the person in the Upstox app, or the bot), filled at the
        current price. No rate limit or order fault applies. Short selling is allowed intraday, as at Upstox.

        Raises UpstoxError for a bad request (unknown symbol, lot size, product); a refused order (market
        closed) comes back with status `rejected`.
        """
        idx = self.market.by_symbol.get(symbol)
        body = {
            "quantity": quantity,
            "product": product,
            "validity": "DAY",
            "price": 0,
            "instrument_token": self.market.instruments[idx].instrument_key if idx is not None else symbol,
            "order_type": "MARKET",
            "transaction_type": side.upper(),
            "disclosed_quantity": 0,
            "trigger_price": 0,
            "is_amo": False,
        }
        (order,) = self.place(body, version=3)
        return order

    def _next_id(self) -> str:
        self._seq += 1
        return to_ist(self.clock.now()).strftime("%y%m%d") + f"{self._seq:07d}"

    def _accept(self, order: Order) -> None:
        inst = order.instrument
        low, high = inst.band_paise
        for label, value in (("price", order.price_paise), ("trigger price", order.trigger_paise)):
            if value and not low <= value <= high:
                self._reject(
                    order, f"{label} {rupees_str(value)} is outside the day's band {rupees_str(low)}-{rupees_str(high)}"
                )
                return
        if not self.market.is_open(inst.segment):
            if order.is_amo:
                order.status = "after market order req received"
            else:
                self._reject(order, "Market is closed; place an AMO instead")
            return
        if order.order_type in ("SL", "SL-M"):
            order.status = "trigger pending"
        self._work(order)

    def _reject(self, order: Order, message: str) -> None:
        order.status = "rejected"
        order.status_message = message
        order.updated_at = self.clock.now()

    # --- matching ------------------------------------------------------------------------------
    def _work(self, order: Order) -> None:
        ltp = self.market.ltp_paise(order.instrument.instrument_key)
        if ltp is None:
            return
        buy = order.transaction_type == "BUY"
        if order.status == "trigger pending":
            triggered = ltp >= order.trigger_paise if buy else ltp <= order.trigger_paise
            if not triggered:
                return
            order.status = "open"
        marketable = ltp <= order.price_paise if buy else ltp >= order.price_paise
        if order.order_type in ("MARKET", "SL-M") or marketable:
            self._fill(order, ltp)
        elif order.validity == "IOC":
            order.status = "cancelled"
            order.status_message = "IOC order cancelled: not marketable"
            order.updated_at = self.clock.now()

    def _fill(self, order: Order, price_paise: int) -> None:
        order.status = "complete"
        order.filled_quantity = order.quantity
        order.average_paise = price_paise
        order.updated_at = self.clock.now()
        self._exchange_seq += 1
        order.exchange_order_id = f"1100000{self._exchange_seq:09d}"
        key = order.instrument.instrument_key
        pos = self.positions.setdefault((key, order.product), _Position(order.instrument, order.product))
        if order.transaction_type == "BUY":
            pos.buy_qty += order.quantity
            pos.buy_value += order.quantity * price_paise
        else:
            pos.sell_qty += order.quantity
            pos.sell_value += order.quantity * price_paise
        self.market.record_fill(key, order.quantity)

    def _on_ticks(self, changed: list[int]) -> None:
        if not any(o.status in ("open", "trigger pending") for o in self.orders.values()):
            return
        keys = {self.market.instruments[i].instrument_key for i in changed}
        for order in list(self.orders.values()):
            if order.status in ("open", "trigger pending") and order.instrument.instrument_key in keys:
                self._work(order)

    def cancel(self, order_id: str) -> Order:
        order = self.get(order_id)
        if order.status not in _WORKING:
            raise UpstoxError(400, errors.INVALID_INPUT, f"Order {order_id} is {order.status}", "order_id", order_id)
        order.status = "cancelled"
        order.updated_at = self.clock.now()
        return order

    # --- reading -------------------------------------------------------------------------------
    def get(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise UpstoxError(400, errors.UNKNOWN_ORDER, "Order not found", "order_id", order_id)
        return order

    def position_rows(self) -> list[dict[str, Any]]:
        """Upstox PositionData rows, one per instrument and product (net quantity signed for shorts, pnl at
        the current price); a squared-off position stays listed with quantity 0, as at Upstox."""
        return [self._position_row(p) for p in self.positions.values()]

    def _position_row(self, p: _Position) -> dict[str, Any]:
        inst = p.instrument
        ltp = self.market.ltp_paise(inst.instrument_key) or 0
        net = p.buy_qty - p.sell_qty
        buy_avg = p.buy_value // p.buy_qty if p.buy_qty else 0
        sell_avg = p.sell_value // p.sell_qty if p.sell_qty else 0
        pnl = p.sell_value - p.buy_value + net * ltp
        closed = min(p.buy_qty, p.sell_qty)
        realised = closed * (sell_avg - buy_avg)
        average = buy_avg if net > 0 else sell_avg if net < 0 else None
        return {
            "exchange": inst.exchange,
            "multiplier": 1.0,
            "value": rupees(p.sell_value - p.buy_value),
            "pnl": rupees(pnl),
            "product": p.product,
            "instrument_token": inst.instrument_key,
            "average_price": rupees(average) if average is not None else None,
            "buy_value": rupees(p.buy_value),
            "overnight_quantity": 0,
            "day_buy_value": rupees(p.buy_value),
            "day_buy_price": rupees(buy_avg),
            "overnight_buy_amount": 0.0,
            "overnight_buy_quantity": 0,
            "day_buy_quantity": p.buy_qty,
            "day_sell_value": rupees(p.sell_value),
            "day_sell_price": rupees(sell_avg),
            "overnight_sell_amount": 0.0,
            "overnight_sell_quantity": 0,
            "day_sell_quantity": p.sell_qty,
            "quantity": net,
            "last_price": rupees(ltp),
            "unrealised": rupees(pnl - realised),
            "realised": rupees(realised),
            "sell_value": rupees(p.sell_value),
            "tradingsymbol": inst.trading_symbol,
            "trading_symbol": inst.trading_symbol,
            "close_price": rupees(inst.close_price_paise),
            "buy_price": rupees(buy_avg),
            "sell_price": rupees(sell_avg),
        }


# --- validation --------------------------------------------------------------------------------
def _bad(message: str, path: str, value: Any = None, code: str = errors.INVALID_INPUT) -> UpstoxError:
    return UpstoxError(400, code, message, path, value)


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(f"{name} must be a number >= 0", name, value)
    return float(value)


def _integer(body: dict[str, Any], name: str, minimum: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(f"{name} must be an integer >= {minimum}", name, value)
    return value


def _to_paise_on_tick(value: float, inst: Instrument, name: str) -> int:
    paise = round(value * 100)
    if abs(paise - value * 100) > 1e-6 or paise % inst.tick_size_paise:
        raise _bad(f"{name} must be a multiple of the tick size {rupees_str(inst.tick_size_paise)}", name, value)
    return paise


def _validate(body: Any, *, version: int, market: Market) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object", "body")
    order_type = body.get("order_type")
    if order_type is None or order_type == "":
        raise _bad("Valid order type is required", "order_type", order_type, errors.ORDER_TYPE_REQUIRED)
    if order_type not in ORDER_TYPES:
        raise _bad("Invalid order_type", "order_type", order_type, errors.INVALID_ORDER_TYPE)
    validity = body.get("validity")
    if validity is None or validity == "":
        raise _bad("Validity is required", "validity", validity, errors.VALIDITY_REQUIRED)
    if validity not in VALIDITIES:
        raise _bad("Invalid validity", "validity", validity, errors.INVALID_VALIDITY)
    products = PRODUCTS_V3 if version == 3 else PRODUCTS_V2
    if body.get("product") not in products:
        raise _bad(f"product must be one of {', '.join(products)}", "product", body.get("product"))
    if body.get("transaction_type") not in TRANSACTION_TYPES:
        raise _bad("transaction_type must be BUY or SELL", "transaction_type", body.get("transaction_type"))
    key = body.get("instrument_token")
    idx = market.index.get(key) if isinstance(key, str) else None
    if idx is None:
        raise _bad("Invalid instrument_token", "instrument_token", key)
    inst = market.instruments[idx]
    if inst.is_index:
        raise _bad("Indices cannot be traded", "instrument_token", key)
    quantity = _integer(body, "quantity", 1)
    if quantity % inst.lot_size:
        raise _bad(f"quantity must be a multiple of the lot size {inst.lot_size}", "quantity", quantity)
    price = _number(body, "price")
    trigger = _number(body, "trigger_price")
    disclosed = _integer(body, "disclosed_quantity", 0)
    if disclosed > quantity:
        raise _bad("disclosed_quantity cannot exceed quantity", "disclosed_quantity", disclosed)
    is_amo = body.get("is_amo")
    if not isinstance(is_amo, bool):
        raise _bad("is_amo must be true or false", "is_amo", is_amo)
    tag = body.get("tag")
    if tag is not None and (not isinstance(tag, str) or len(tag) > MAX_TAG_LEN):
        raise _bad(f"tag must be a string of at most {MAX_TAG_LEN} characters", "tag", tag)
    slice_ = body.get("slice", False)
    if version == 3 and not isinstance(slice_, bool):
        raise _bad("slice must be true or false", "slice", slice_)
    price_paise = 0
    trigger_paise = 0
    if order_type in ("LIMIT", "SL"):
        if price <= 0:
            raise _bad(f"price is required for {order_type} orders", "price", price)
        price_paise = _to_paise_on_tick(price, inst, "price")
    if order_type in ("SL", "SL-M"):
        if trigger <= 0:
            raise _bad(f"trigger_price is required for {order_type} orders", "trigger_price", trigger)
        trigger_paise = _to_paise_on_tick(trigger, inst, "trigger_price")
    return {
        "instrument": inst,
        "order_type": order_type,
        "validity": validity,
        "product": body["product"],
        "transaction_type": body["transaction_type"],
        "quantity": quantity,
        "price_paise": price_paise,
        "trigger_paise": trigger_paise,
        "disclosed_quantity": disclosed,
        "is_amo": is_amo,
        "tag": tag,
        "slice": bool(slice_) if version == 3 else False,
    }
