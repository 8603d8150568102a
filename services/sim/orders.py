"""The simulated order book: the order lifecycle, fills, trades and the order rate limits.

An order goes through Upstox's statuses (put order req received -> validation pending -> open pending ->
open / trigger pending -> complete / rejected / cancelled), each stage kept for `/v2/order/history`.
MARKET orders fill at once at the current price; LIMIT orders when marketable, else they rest `open`;
SL / SL-M rest `trigger pending` until the trigger is crossed. Order faults (`partial_fill`, `slow_fill`,
`reject`) apply to orders placed while they are active. Prices outside the day's band are rejected the way
the exchange does it; malformed requests get a 400 envelope. Money is integer paise inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from libs.common.clock import Clock, to_ist
from libs.common.instruments import Instrument
from libs.common.money import Paise, rupees, rupees_str
from services.sim import errors
from services.sim.errors import UpstoxError
from services.sim.faults import Faults
from services.sim.market import Market
from services.sim.positions import BrokerPositions
from services.sim.ratelimit import RateLimiter
from services.sim.validation import validate

MAX_SLICES = 25
_WORKING = ("open", "trigger pending", "after market order req received")
_STAGES = ("put order req received", "validation pending", "open pending")


def _stamp(epoch_s: float) -> str:
    return to_ist(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


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
    price_paise: Paise
    trigger_paise: Paise
    disclosed_quantity: int
    is_amo: bool
    tag: str | None
    placed_at: float
    status: str = "put order req received"
    status_message: str | None = None
    filled_quantity: int = 0
    average_paise: Paise = Paise(0)
    exchange_order_id: str = ""
    updated_at: float = 0.0
    fill_ratio: float = 1.0  # the share that fills (partial_fill fault); the rest is cancelled
    fill_not_before: float = 0.0  # monotonic s (slow_fill fault)
    ref_id: str = ""  # order_ref_id: the GTT that placed it ("GTT-..."), else the tag
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        sym = self.instrument.trading_symbol
        working = self.status in _WORKING or self.status in _STAGES
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
            "pending_quantity": self.quantity - self.filled_quantity if working else 0,
            "status_message": self.status_message,
            "status_message_raw": self.status_message,
            "exchange_order_id": self.exchange_order_id or None,
            "parent_order_id": None,
            "order_id": self.order_id,
            "variety": "AMO" if self.is_amo else "SIMPLE",
            "order_timestamp": _stamp(self.placed_at),
            "exchange_timestamp": _stamp(self.updated_at or self.placed_at) if self.exchange_order_id else None,
            "is_amo": self.is_amo,
            "order_request_id": "1",
            "order_ref_id": self.ref_id or self.tag or "",
        }


class OrderBook:
    """Orders, trades and positions of the (single) simulated user."""

    def __init__(
        self,
        market: Market,
        clock: Clock,
        *,
        faults: Faults | None = None,
        rate_limit_per_s: int = 10,
        rate_limit_per_min: int = 0,
    ) -> None:
        self.market = market
        self.clock = clock
        self.faults = faults or Faults()
        self.limiter = RateLimiter((1.0, rate_limit_per_s), (60.0, rate_limit_per_min))
        self.orders: dict[str, Order] = {}
        self.trades: list[dict[str, Any]] = []
        self.positions = BrokerPositions(market)
        self._seq = 0
        self._exchange_seq = 0
        market.listeners.append(self._on_ticks)

    def reset(self) -> None:
        self.orders.clear()
        self.trades.clear()
        self.positions.clear()
        self.limiter.clear()
        self._seq = 0
        self._exchange_seq = 0

    # --- placing -------------------------------------------------------------------------------
    def check_rate(self, token_key: str) -> None:
        """Raise 429 UDAPI10005 when this token is over an order-rate window (per second or per minute)."""
        if not self.limiter.allow(token_key):
            raise errors.rate_limited()

    def place(self, body: Any, *, version: int, external: bool = False) -> list[Order]:
        """Validate a place-order body (v2 or v3) and book it; one order, or several when v3 slices.
        `external` orders (`/sim/trade`) are exempt from order faults."""
        req = validate(body, version=version, market=self.market)
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
            self._accept(order, external=external)
            placed.append(order)
        return placed

    def trade(self, symbol: str, side: str, quantity: int, product: str = "I") -> Order:
        """A MARKET order made outside the guard (the person in the Upstox app, or the bot), filled at the
        current price (sliced by the freeze quantity, as the app does; the first child not complete is returned,
        else the last). No rate limit or order fault applies. Short selling is allowed intraday, as at Upstox.

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
            "slice": True,
        }
        placed = self.place(body, version=3, external=True)
        return next((o for o in placed if o.status != "complete"), placed[-1])

    def place_internal(
        self, inst: Instrument, *, transaction_type: str, quantity: int, product: str, price_paise: Paise, ref_id: str
    ) -> Order:
        """A DAY LIMIT order the broker places itself (a fired GTT, `ref_id` its id): no rate limit, no order
        fault; the exchange checks it like any other (lot multiple, freeze quantity: nothing slices it, expiry,
        band, market hours), so one that breaks a rule is booked `rejected` with the exchange's reason."""
        body = {
            "quantity": quantity, "product": product, "validity": "DAY", "price": rupees(price_paise),
            "instrument_token": inst.instrument_key, "order_type": "LIMIT", "transaction_type": transaction_type,
            "disclosed_quantity": 0, "trigger_price": 0, "is_amo": False,
        }  # fmt: skip
        try:
            validate(body, version=2, market=self.market)
            refused = None
        except UpstoxError as exc:
            refused = exc.message
        order = Order(
            order_id=self._next_id(),
            instrument=inst,
            transaction_type=transaction_type,
            order_type="LIMIT",
            product=product,
            validity="DAY",
            quantity=quantity,
            price_paise=price_paise,
            trigger_paise=Paise(0),
            disclosed_quantity=0,
            is_amo=False,
            tag=None,
            placed_at=self.clock.now(),
            ref_id=ref_id,
        )
        self.orders[order.order_id] = order
        self._accept(order, external=True, refused=refused)
        return order

    def _next_id(self) -> str:
        self._seq += 1
        return to_ist(self.clock.now()).strftime("%y%m%d") + f"{self._seq:07d}"

    def _set(self, order: Order, status: str, message: str | None = None) -> None:
        order.status = status
        if message is not None:
            order.status_message = message
        order.updated_at = self.clock.now()
        order.history.append(order.as_dict())

    def _accept(self, order: Order, *, external: bool, refused: str | None = None) -> None:
        for stage in _STAGES:
            self._set(order, stage)
        if refused is not None:
            self._set(order, "rejected", refused)
            return
        inst = order.instrument
        low, high = inst.band_paise
        for label, value in (("price", order.price_paise), ("trigger price", order.trigger_paise)):
            if value and not low <= value <= high:
                bounds = f"{rupees_str(low)}-{rupees_str(high)}"
                self._set(order, "rejected", f"{label} {rupees_str(value)} is outside the day's band {bounds}")
                return
        if not external and self.faults.active("reject"):
            self._set(order, "rejected", self.faults.reject_message)
            return
        if not self.market.is_open(inst.segment):
            if order.is_amo:
                self._set(order, "after market order req received")
            else:
                self._set(order, "rejected", "Market is closed; place an AMO instead")
            return
        if not external:
            if self.faults.active("partial_fill") and self.faults.take("partial_fill"):
                order.fill_ratio = self.faults.fill_ratio
            if self.faults.active("slow_fill"):
                order.fill_not_before = time.monotonic() + self.faults.fill_delay_s
                self._wake_after(order, self.faults.fill_delay_s)
        self._set(order, "trigger pending" if order.order_type in ("SL", "SL-M") else "open")
        self._work(order)

    def _wake_after(self, order: Order, delay_s: float) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: the next tick works the order
            asyncio.get_running_loop().call_later(delay_s, self._work, order)

    # --- matching ------------------------------------------------------------------------------
    def _work(self, order: Order) -> None:
        if order.status not in ("open", "trigger pending") or time.monotonic() < order.fill_not_before:
            return
        ltp = self.market.ltp_paise(order.instrument.instrument_key)
        if ltp is None:
            return
        buy = order.transaction_type == "BUY"
        if order.status == "trigger pending":
            triggered = ltp >= order.trigger_paise if buy else ltp <= order.trigger_paise
            if not triggered:
                return
            self._set(order, "open")
        marketable = ltp <= order.price_paise if buy else ltp >= order.price_paise
        if order.order_type in ("MARKET", "SL-M") or marketable:
            self._fill(order, ltp)
        elif order.validity == "IOC":
            self._set(order, "cancelled", "IOC order cancelled: not marketable")

    def _fill(self, order: Order, price_paise: Paise) -> None:
        lot = order.instrument.lot_size
        qty = min(order.quantity, int(order.quantity * order.fill_ratio) // lot * lot)
        self._exchange_seq += 1
        order.exchange_order_id = f"1100000{self._exchange_seq:09d}"
        if qty:
            order.filled_quantity = qty
            order.average_paise = price_paise
            self.positions.apply_fill(order.instrument, order.product, order.transaction_type, qty, price_paise)
            self.market.record_fill(order.instrument.instrument_key, qty)
            self._record_trade(order, qty, price_paise)
        if qty == order.quantity:
            self._set(order, "complete")
        else:  # what a market-protection clip does: the part beyond the band is cancelled
            rest = order.quantity - qty
            self._set(order, "cancelled", f"{qty} filled; remaining {rest} cancelled by market protection")

    def _record_trade(self, order: Order, qty: int, price_paise: Paise) -> None:
        at = _stamp(self.clock.now())
        self.trades.append(
            {
                "exchange": order.instrument.exchange,
                "product": order.product,
                "trading_symbol": order.instrument.trading_symbol,
                "tradingsymbol": order.instrument.trading_symbol,
                "instrument_token": order.instrument.instrument_key,
                "order_type": order.order_type,
                "transaction_type": order.transaction_type,
                "quantity": qty,
                "exchange_order_id": order.exchange_order_id,
                "order_id": order.order_id,
                "exchange_timestamp": at,
                "average_price": rupees(price_paise),
                "trade_id": f"{len(self.trades) + 1:08d}",
                "order_ref_id": order.ref_id or order.tag or "",
                "order_timestamp": _stamp(order.placed_at),
            }
        )

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
            raise UpstoxError(400, errors.CANCEL_TERMINAL, f"Order {order_id} is {order.status}", "order_id", order_id)
        self._set(order, "cancelled", "Cancelled by user")
        return order

    # --- reading -------------------------------------------------------------------------------
    def get(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise UpstoxError(400, errors.UNKNOWN_ORDER, "Order not found", "order_id", order_id)
        return order

    def history(self, *, order_id: str | None, tag: str | None) -> list[dict[str, Any]]:
        """Every stage of the order (`order_id`) or of the orders carrying `tag`, oldest first."""
        if order_id:
            return list(self.get(order_id).history)
        if not tag:
            raise UpstoxError(400, errors.INVALID_INPUT, "order_id or tag is required", "order_id")
        return [stage for o in self.orders.values() if o.tag == tag for stage in o.history]

    def position_rows(self) -> list[dict[str, Any]]:
        """Upstox PositionData rows (see `services.sim.positions`)."""
        return self.positions.rows()
