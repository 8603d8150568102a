"""Domain models shared by the services. Money is integer paise (see `libs.common.money`).

Each model knows its Redis hash form (`to_redis` / `from_redis`); `from_redis` raises
`MalformedRecord` for a hash that cannot be a valid record, so a reader can report and skip it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from libs.common.money import Paise, ltp_paise, rupees, rupees_str, to_paise


class MalformedRecord(ValueError):
    """A Redis record that cannot be read as the model it should be."""


class FeedState(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


class Side(StrEnum):
    LONG = "long"
    SHORT = "short"


class PositionState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class CloseReason(StrEnum):
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    EMERGENCY = "emergency"


class PriceSource(StrEnum):
    """Where the price a decision used came from (the guide's layers)."""

    LIVE = "live"
    REST = "rest"  # WebSocket down, price from the REST LTP poll (Layer 2b), age < stale threshold
    CACHED = "cached"  # feed down, age < stale threshold
    STALE = "stale"  # feed down, stale threshold <= age < cache expiry
    BROKER = "broker"  # no usable cached price; the broker's fill decides


class FeedStatus(BaseModel):
    """The feed's `feed:status` hash: what connection health shows under `websocket`."""

    model_config = ConfigDict(frozen=True)

    state: FeedState = FeedState.CLOSED
    connected: bool = False
    subscribed_symbols: int = 0
    mode: str = ""  # the subscription mode of every symbol not in `other_modes`
    other_modes: str = "{}"  # JSON: SYMBOL -> mode for the symbols subscribed in another mode (options)
    reconnect_attempts: int = 0
    network_errors: int = 0
    corrupt_frames: int = 0
    absurd_prices: int = 0  # ticks refused as not a price (see services/feed/decode.py)
    out_of_order_ticks: int = 0  # ticks older (exchange time) than the cached one, dropped
    superseded_ticks: int = 0  # ticks left out while the decoder caught up (a newer tick of the symbol was kept)
    server_pings: int = 0  # pings the server sent on the current connection
    last_server_ping_at: float | None = None
    silent_symbols: int = 0  # subscribed instruments found silent while their segment trades
    rest_polling: bool = False  # WebSocket down, REST answers: open positions' prices come from LTP V3 (Layer 2b)
    last_message_at: float | None = None  # any frame or pong: the connection is alive
    last_data_at: float | None = None  # last frame carrying prices
    market_open: bool | None = None
    token_ok: bool | None = None  # False after a 401 until a connect succeeds
    dns_resolver: str = ""  # "system", "Google DNS", "Cloudflare DNS", "remembered"
    resolved_address: str = ""
    last_error: str = ""
    outage_started_at: float | None = None  # epoch s the current outage began (None while live)
    next_retry_at: float | None = None  # epoch s of the next reconnect attempt during an outage
    updated_at: float | None = None

    def to_redis(self) -> dict[str, str]:
        flags = {True: "1", False: "0", None: ""}
        data = self.model_dump(mode="json")
        return {k: flags[v] if v is None or isinstance(v, bool) else str(v) for k, v in data.items()}

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Self:
        """Missing fields take their defaults (a feed that never ran reads as closed)."""
        try:
            return cls.model_validate({k: v for k, v in data.items() if v != "" and k in cls.model_fields})
        except ValidationError as exc:
            raise MalformedRecord(f"feed:status: {exc}") from None


def _str_map(data: dict[str, Any]) -> dict[str, str]:
    return {k: ("" if v is None else str(v)) for k, v in data.items()}


class PriceEntry(BaseModel):
    """One `price:SYMBOL` hash: the last price and the time it was last known current."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    instrument_key: str
    ltp: Paise
    as_of: float = Field(description="epoch s the price was last known current (tick or vouch)")
    ltt_ms: int | None = None
    cp: Paise | None = None
    received_at: float | None = None

    def age_s(self, now: float) -> float:
        """Seconds since the price was last known current (never negative)."""
        return max(0.0, now - self.as_of)

    @classmethod
    def from_redis(cls, symbol: str, data: dict[str, str]) -> Self:
        try:
            return cls(
                symbol=symbol,
                instrument_key=data["instrument_key"],
                ltp=ltp_paise(data["ltp"]),
                as_of=float(data["as_of"]),
                ltt_ms=int(data["ltt_ms"]) if data.get("ltt_ms") else None,
                cp=to_paise(data["cp"]) if data.get("cp") else None,
                received_at=float(data["received_at"]) if data.get("received_at") else None,
            )
        except (KeyError, ValueError, ValidationError) as exc:
            raise MalformedRecord(f"price:{symbol}: {exc}") from None


class Trigger(BaseModel):
    """A protection level crossed by a price."""

    model_config = ConfigDict(frozen=True)

    reason: CloseReason
    level: Paise
    comparison: str  # "<=" or ">=" as the guide prints it


def level_at_pct(entry: Paise, side: Side, pct: float, *, stop: bool) -> Paise:
    """SL/TP `pct` percent away from `entry` (paise): a stop below a long's entry (above a short's), a target
    beyond it."""
    below = stop == (side is Side.LONG)
    factor = Decimal(1) - Decimal(str(pct)) / 100 if below else Decimal(1) + Decimal(str(pct)) / 100
    return to_paise(Decimal(entry) / 100 * factor)


class Position(BaseModel):
    """The position on one symbol. State moves open -> closing -> closed, only through the claim."""

    model_config = ConfigDict(frozen=True)
    MONEY_FIELDS: ClassVar[tuple[str, ...]] = ("entry_price", "stop_loss", "take_profit")  # paise; rupees outside

    symbol: str = Field(min_length=1, max_length=40)
    instrument_key: str = Field(min_length=3)
    side: Side
    quantity: int = Field(gt=0)
    entry_price: Paise = Field(gt=0)
    stop_loss: Paise | None = Field(None, gt=0)
    take_profit: Paise | None = Field(None, gt=0)
    opened_at: float
    state: PositionState = PositionState.OPEN
    claim_id: str = ""
    claimed_at: float | None = None
    close_reason: CloseReason | None = None
    close_attempts: int = 0
    last_error: str = ""
    next_attempt_at: float | None = None
    unmonitored_since: float | None = None
    # Set by the position scripts (libs/common/positions.py) from `positions:rev`: every change of the record
    # takes the next revision, so of two copies the one with the higher `rev` is the newer; `opened_rev` is the
    # revision it was opened at, which tells this position from an earlier one on the same symbol.
    rev: int = 0
    opened_rev: int = 0

    @model_validator(mode="after")
    def _levels_on_the_right_side(self) -> Self:
        long = self.side is Side.LONG
        if self.stop_loss is not None and (self.stop_loss >= self.entry_price) == long:
            raise ValueError(f"stop_loss must be {'below' if long else 'above'} entry_price for a {self.side}")
        if self.take_profit is not None and (self.take_profit <= self.entry_price) == long:
            raise ValueError(f"take_profit must be {'above' if long else 'below'} entry_price for a {self.side}")
        return self

    def trigger(self, price: Paise) -> Trigger | None:
        """The level `price` crosses, if any. Long: SL at price <= SL, TP at price >= TP; short mirrors."""
        if self.side is Side.LONG:
            if self.stop_loss is not None and price <= self.stop_loss:
                return Trigger(reason=CloseReason.STOP_LOSS, level=self.stop_loss, comparison="<=")
            if self.take_profit is not None and price >= self.take_profit:
                return Trigger(reason=CloseReason.TAKE_PROFIT, level=self.take_profit, comparison=">=")
        else:
            if self.stop_loss is not None and price >= self.stop_loss:
                return Trigger(reason=CloseReason.STOP_LOSS, level=self.stop_loss, comparison=">=")
            if self.take_profit is not None and price <= self.take_profit:
                return Trigger(reason=CloseReason.TAKE_PROFIT, level=self.take_profit, comparison="<=")
        return None

    def pnl(self, exit_price: Paise) -> Paise:
        """(exit - entry) x qty for a long, the opposite for a short."""
        per_unit = exit_price - self.entry_price
        return Paise(per_unit * self.quantity if self.side is Side.LONG else -per_unit * self.quantity)

    def to_redis(self) -> dict[str, str]:
        data = self.model_dump(mode="json")
        for field in self.MONEY_FIELDS:
            if data[field] is not None:
                data[field] = rupees_str(data[field])
        return _str_map(data)

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Self:
        try:
            raw: dict[str, Any] = {k: v for k, v in data.items() if v != ""}
            for field in cls.MONEY_FIELDS:
                if field in raw:
                    raw[field] = to_paise(raw[field])
            return cls.model_validate(raw)
        except (ValueError, ValidationError) as exc:
            symbol = data.get("symbol", "?")
            raise MalformedRecord(f"position:{symbol}: {exc}") from None

    def public(self) -> dict[str, Any]:
        """JSON for people and the API: rupees as numbers."""
        out = self.model_dump(mode="json")
        for field in self.MONEY_FIELDS:
            if out[field] is not None:
                out[field] = rupees(out[field])
        return out


class CloseRecord(BaseModel):
    """One entry of the close journal."""

    model_config = ConfigDict(frozen=True)
    MONEY_FIELDS: ClassVar[tuple[str, ...]] = ("entry_price", "exit_price", "pnl")  # paise; rupees outside

    symbol: str
    instrument_key: str
    side: Side
    quantity: int
    entry_price: Paise
    exit_price: Paise
    pnl: Paise
    reason: CloseReason
    closed_at: float
    order_id: str
    price_source: PriceSource
    price_age_s: float | None
    closed_by: str  # "monitor" or "api"
    # Units still held and guarded after this exit: > 0 for a partial close (part sold, the position open again for
    # the rest, whose own close is journaled later). Old records lack it: 0, a whole close.
    remaining: int = Field(0, ge=0)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise MalformedRecord(f"close record: {exc}") from None

    def public(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for field in self.MONEY_FIELDS:
            out[field] = rupees(out[field])
        return out


def dumps_compact(data: object) -> str:
    """Compact JSON for pub/sub notices."""
    return json.dumps(data, separators=(",", ":"))
