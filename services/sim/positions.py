"""The simulated broker's day positions: one row per instrument and product, fed by every fill.

Rows are Upstox's PositionData shape (`GET /v2/portfolio/short-term-positions`): net `quantity` signed
for shorts, day buy/sell quantities and values, `average_price` of the open side, pnl at the current
price. A squared-off position stays listed with quantity 0, as it does at Upstox. Money is paise inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.common.instruments import Instrument
from libs.common.money import Paise, rupees
from services.sim.market import Market


@dataclass
class _Position:
    instrument: Instrument
    product: str
    buy_qty: int = 0
    buy_value: Paise = Paise(0)
    sell_qty: int = 0
    sell_value: Paise = Paise(0)


class BrokerPositions:
    """What the simulated user holds, as the broker reports it."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self._rows: dict[tuple[str, str], _Position] = {}  # (instrument_key, product)

    def clear(self) -> None:
        self._rows.clear()

    def apply_fill(self, instrument: Instrument, product: str, transaction_type: str, qty: int, price: Paise) -> None:
        """Book `qty` filled at `price` paise."""
        key = (instrument.instrument_key, product)
        pos = self._rows.setdefault(key, _Position(instrument, product))
        if transaction_type == "BUY":
            pos.buy_qty += qty
            pos.buy_value = Paise(pos.buy_value + qty * price)
        else:
            pos.sell_qty += qty
            pos.sell_value = Paise(pos.sell_value + qty * price)

    def net(self, instrument_key: str, product: str) -> int:
        """Net quantity held (negative: short), 0 when flat or never traded."""
        pos = self._rows.get((instrument_key, product))
        return pos.buy_qty - pos.sell_qty if pos else 0

    def rows(self) -> list[dict[str, Any]]:
        return [self._row(p) for p in self._rows.values()]

    def _row(self, p: _Position) -> dict[str, Any]:
        inst = p.instrument
        ltp = self.market.ltp_paise(inst.instrument_key) or Paise(0)
        net = p.buy_qty - p.sell_qty
        buy_avg = Paise(p.buy_value // p.buy_qty if p.buy_qty else 0)
        sell_avg = Paise(p.sell_value // p.sell_qty if p.sell_qty else 0)
        pnl = Paise(p.sell_value - p.buy_value + net * ltp)
        closed = min(p.buy_qty, p.sell_qty)
        realised = Paise(closed * (sell_avg - buy_avg))
        average = buy_avg if net > 0 else sell_avg if net < 0 else None
        return {
            "exchange": inst.exchange,
            "multiplier": 1.0,
            "value": rupees(Paise(p.sell_value - p.buy_value)),
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
            "unrealised": rupees(Paise(pnl - realised)),
            "realised": rupees(realised),
            "sell_value": rupees(p.sell_value),
            "tradingsymbol": inst.trading_symbol,
            "trading_symbol": inst.trading_symbol,
            "close_price": rupees(inst.close_price_paise),
            "buy_price": rupees(buy_avg),
            "sell_price": rupees(sell_avg),
        }
