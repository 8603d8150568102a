"""Request and response models of the api. Rupee numbers in JSON; paise inside."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.common.models import CloseReason, PriceSource, Side

# A trading symbol as Upstox writes it (it becomes part of Redis key names: no colons; single spaces only
# between words, as in F&O symbols such as "NIFTY 24000 CE 08 DEC 26").
SYMBOL_PATTERN = r"^[A-Za-z0-9&_.\-]+( [A-Za-z0-9&_.\-]+)*$"
Symbol = Annotated[str, Field(min_length=1, max_length=40, pattern=SYMBOL_PATTERN, examples=["BOSCHLTD"])]
Rupees = Annotated[float, Field(gt=0, le=10_000_000)]
SlPct = Annotated[float, Field(gt=0, lt=100, description="percent of entry_price")]
TpPct = Annotated[float, Field(gt=0, le=1000, description="percent of entry_price")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- monitoring -------------------------------------------------------------------------------


class WebSocketHealth(BaseModel):
    connected: bool = Field(description="the feed is alive and its WebSocket is connected")
    subscribed_symbols: int
    mode: str = Field("", description="the subscription mode of every symbol not listed in `modes`")
    modes: dict[str, str] = Field(default_factory=dict, description="SYMBOL -> mode where it differs (options)")
    reconnect_attempts: int
    network_errors: int
    state: str = Field(description="the feed's connection state: connecting, live, reconnecting, closing, closed")
    feed_alive: bool = Field(description="the feed process's heartbeat is fresh")
    feed_heartbeat_age_s: float | None
    seconds_since_last_message: float | None = Field(description="since the feed last heard anything (frame or pong)")
    last_error: str
    price_source: Literal["websocket", "rest", "none"] = Field(
        "none",
        description="where fresh prices come from now: the WebSocket, the REST LTP poll (Layer 2b), or nowhere",
    )


class CacheEntry(BaseModel):
    price: float | None = Field(description="rupees; null when the cached price has expired")
    age_seconds: int | None = Field(description="whole seconds since the price was last known current")
    is_stale: bool = Field(
        description="age_seconds >= PRICE_STALE_AFTER_S, no price at all, or the instrument found silent (see reason)"
    )
    status: Literal["fresh", "stale", "expired"]
    has_open_position: bool
    source: Literal["live", "rest", "cached", "stale"] | None = Field(
        None, description="the layer a decision on this price would record (rest: the REST LTP poll)"
    )
    reason: str = Field("", description="why the price has this status")


class OpenPositionPrices(BaseModel):
    fresh: int
    stale: int
    expired: int


class PriceCacheHealth(BaseModel):
    cached_symbols: int
    last_update: float | None = Field(description="epoch s of the newest cached price")
    seconds_since_last_update: float | None
    stale_after_s: float
    expires_after_s: int
    open_positions: OpenPositionPrices
    cache_entries: dict[str, CacheEntry]


class FeedLeadershipInfo(BaseModel):
    leader: str | None = Field(description="instance name of the feed holding the Upstox connection (the lease)")
    fencing_token: str | None = Field(description="the leader's fencing token: N:holder")
    leader_since: float | None = Field(description="epoch s the leader acquired the lease")
    lease_age_s: float | None = Field(description="seconds since the leader last renewed its lease")
    lease_expires_in_s: float | None = Field(description="seconds until the lease expires unless renewed")
    standbys: list[str] = Field(description="live feed instances ready to take over")


class ExpiringContract(BaseModel):
    """An open position's F&O contract that expires today (trading ends 15:30 IST)."""

    symbol: str
    instrument_key: str
    trading_ends: str = Field(examples=["2026-01-06T15:30:00+05:30"])
    minutes_left: float
    expired: bool = Field(description="trading has ended while the position is still open")


class ExpiringPosition(ExpiringContract):
    quantity: int
    side: Side


class ConnectionHealth(BaseModel):
    timestamp: str = Field(examples=["2026-01-07T11:30:00+05:30"])
    websocket: WebSocketHealth
    price_cache: PriceCacheHealth
    advice_branch: Literal["live", "fallback", "fresh_cache", "stale_cache", "expired"]
    advice: str
    feed_leadership: FeedLeadershipInfo | None = None
    safety_net_keeper: str | None = Field(None, description="the monitor instance keeping the safety nets (GTTs)")
    expiring_today: list[ExpiringContract] = Field(default_factory=list)


class EmergencyCloseRequest(_Request):
    symbol: Symbol
    reason: CloseReason = Field(examples=["stop_loss"])


class EmergencyCloseResponse(BaseModel):
    status: Literal["success"]
    symbol: str
    entry_price: float
    exit_price: float
    pnl: float
    reason: CloseReason
    message: str
    quantity: int
    side: Side
    order_id: str
    price_age_seconds: float | None
    price_source: PriceSource
    closed_at: str
    closed_by: str = Field("api", description='"external" when the broker already held none: no order was sent')


class EmergencyClosePending(BaseModel):
    """The order was sent but its outcome is unknown (a 5xx or timeout): it is settled with the broker by tag."""

    status: Literal["pending"]
    symbol: str
    claim_id: str
    message: str


class OrdersStatus(BaseModel):
    blocked: bool
    reason: str | None = None
    since: str | None = None
    static_ips: dict[str, Any] | None = Field(None, description="GET /v2/user/ip (Upstox only)")


class SafetyNetOut(BaseModel):
    """Layer 0: the position's stop-loss kept at the broker (a GTT)."""

    state: str = Field(description="placing, active, retrying, unknown, fired, cancelled, ended, refused, none or off")
    gtt_id: str | None = Field(None, description="the first GTT's id (see gtt_ids)")
    gtt_ids: list[str] = Field(
        default_factory=list, description="one GTT per leg: whole lots, at most the freeze quantity each"
    )
    quantities: list[int] = Field(default_factory=list, description="each leg's quantity, in gtt_ids order")
    trigger_price: float | None = None
    last_error: str | None = None


class SafetyNetKeeperInfo(BaseModel):
    keeper: str | None = Field(description="the monitor instance holding safety_net:lease (it places the GTTs)")
    fencing_token: str | None = Field(description="the keeper's fencing token: N:holder")
    keeper_since: float | None = Field(description="epoch s the keeper acquired the lease")
    lease_age_s: float | None = Field(description="seconds since the keeper last renewed its lease")
    lease_expires_in_s: float | None = Field(description="seconds until the lease expires unless renewed")
    standbys: list[str] = Field(description="live monitor instances ready to take over")


class SafetyNetStatus(BaseModel):
    enabled: bool
    buffer_pct: float
    keeper: SafetyNetKeeperInfo | None = None
    states: dict[str, int] = Field(description="open positions per safety-net state")
    failing: list[dict[str, Any]] = Field(description="open positions whose GTT is not in place, and why")


class BrokerPositionsStatus(BaseModel):
    as_of: str | None
    unguarded: list[dict[str, Any]] = Field(description="broker positions no guard record covers (not adopted)")


class TokenStatus(BaseModel):
    valid: bool | None = Field(description="null when the profile endpoint could not be asked")
    checked_at: str | None
    detail: str


class RedisStatus(BaseModel):
    reachable: bool
    latency_ms: float | None
    error: str = ""


class ServiceStatus(BaseModel):
    alive: bool
    heartbeat_age_s: float | None


class FeedDetail(BaseModel):
    state: str
    connected: bool
    token_ok: bool | None
    last_error: str
    dns_resolver: str
    leadership: FeedLeadershipInfo | None = None


class CredentialStatus(BaseModel):
    kind: Literal["access", "analytics"]
    state: Literal["valid", "expiring", "expired", "rejected"]
    expires_at: str | None = Field(description="ISO 8601 IST; null: never (the simulator's fixed token) or unknown")
    expiry_basis: str = Field(description="`token` (its exp claim), `03:30 IST rule`, `never` or `unknown`")
    source: str = Field(description="env, sim, api, cli, login or notifier")
    used_for: str
    detail: str


class Status(BaseModel):
    timestamp: str
    market: Literal["simulator", "upstox"]
    api_base: str
    token: TokenStatus
    credentials: list[CredentialStatus] = Field(description="the access token, then the analytics token if set")
    redis: RedisStatus
    services: dict[str, ServiceStatus]
    instances: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="SERVICE -> each live instance (INSTANCE_NAME) -> seconds since its beat"
    )
    feed: FeedDetail | None
    notes: dict[str, str] = Field(description="services:status notes, e.g. the monitor's last broker error")
    recent_events: list[dict[str, Any]]
    orders: OrdersStatus | None = None
    broker_positions: BrokerPositionsStatus | None = None
    expiring_today: list[ExpiringPosition] = Field(default_factory=list)
    safety_net: SafetyNetStatus | None = None


# --- positions --------------------------------------------------------------------------------


class OpenPositionRequest(_Request):
    symbol: Symbol
    side: Side
    quantity: int = Field(gt=0, le=10_000_000, examples=[10])
    entry_price: Rupees
    stop_loss: Rupees | None = None
    take_profit: Rupees | None = None
    stop_loss_pct: SlPct | None = None
    take_profit_pct: TpPct | None = None
    instrument_key: str | None = Field(None, min_length=3, max_length=80, examples=["NSE_EQ|INE323A01026"])

    @model_validator(mode="after")
    def _one_way_per_level(self) -> OpenPositionRequest:
        _check_one_way(self.stop_loss, self.stop_loss_pct, "stop_loss")
        _check_one_way(self.take_profit, self.take_profit_pct, "take_profit")
        return self


class UpdateLevelsRequest(_Request):
    stop_loss: Rupees | None = None
    take_profit: Rupees | None = None
    stop_loss_pct: SlPct | None = None
    take_profit_pct: TpPct | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateLevelsRequest:
        _check_one_way(self.stop_loss, self.stop_loss_pct, "stop_loss")
        _check_one_way(self.take_profit, self.take_profit_pct, "take_profit")
        if all(v is None for v in (self.stop_loss, self.take_profit, self.stop_loss_pct, self.take_profit_pct)):
            raise ValueError("give stop_loss/stop_loss_pct and/or take_profit/take_profit_pct")
        return self


def _check_one_way(absolute: float | None, pct: float | None, name: str) -> None:
    if absolute is not None and pct is not None:
        raise ValueError(f"give either {name} or {name}_pct, not both")


class PositionOut(BaseModel):
    symbol: str
    instrument_key: str
    side: Side
    quantity: int
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    state: str
    opened_at: str
    close_reason: str | None
    close_attempts: int
    last_error: str
    ltp: float | None = Field(description="the cached price in rupees, null when none is cached")
    price_age_seconds: float | None
    unrealized_pnl: float | None
    warning: str | None = Field(None, description="set when the broker's positions could not confirm the position")
    safety_net: SafetyNetOut | None = Field(None, description="Layer 0: the stop kept at the broker (a GTT)")


class PositionList(BaseModel):
    positions: list[PositionOut]
    malformed: list[str] = Field(description="records that could not be read (reported, skipped)")


class CloseOut(BaseModel):
    symbol: str
    instrument_key: str
    side: Side
    quantity: int
    entry_price: float
    exit_price: float
    pnl: float
    reason: CloseReason
    closed_at: str
    order_id: str
    price_source: PriceSource
    price_age_s: float | None
    closed_by: str
    remaining: int = Field(description="units still held and guarded after this exit (> 0: a partial close)")


class CloseList(BaseModel):
    closes: list[CloseOut]
    malformed: list[str]


class ErrorOut(BaseModel):
    detail: str


def unprocessable(message: str, *loc: str) -> RequestValidationError:
    """A 422 in the same shape as FastAPI's own validation errors (`detail` list plus a `message` line)."""
    return RequestValidationError([{"type": "value_error", "loc": loc or ("body",), "msg": message}])


class ValidationErrorOut(BaseModel):
    detail: list[dict[str, Any]]
    message: str


class AlertTestTarget(BaseModel):
    index: int = Field(description="position in ALERT_URLS, from 1")
    target: str = Field(description="the URL with its secrets masked (apprise's privacy form)")
    sent: bool
    error: str = ""


class AlertTestOut(BaseModel):
    timestamp: str
    sent: int
    failed: int
    targets: list[AlertTestTarget]
    message: str


# --- auth -------------------------------------------------------------------------------------

# A token is printable ASCII without spaces; it is never echoed back, not even in a 422.
TokenText = Annotated[str, Field(min_length=8, max_length=4096, pattern=r"^[\x21-\x7e]+$")]


class TokenIn(_Request):
    access_token: TokenText


class NotifierIn(BaseModel):
    """Upstox's access-token request webhook (fields as Upstox posts them; unknown ones ignored)."""

    client_id: str = Field(max_length=200)
    user_id: str = Field(max_length=200)
    access_token: TokenText
    token_type: str = Field("Bearer", max_length=40)
    expires_at: str | None = Field(None, max_length=40)
    issued_at: str | None = Field(None, max_length=40)
    message_type: Literal["access_token"] = "access_token"


class TokenOut(BaseModel):
    status: Literal["accepted"]
    source: str
    user_id: str
    expires_at: str | None
    expiry_basis: str
    message: str
