"""The alert table: what each alert type says, how bad it is and what the guide asks the person to do.

A new event type is one entry in `ALERTS`. An entry whose `condition` is set raises (or, with `ends`, ends)
that condition; conditions are folded (one message per condition per ALERT_REPEAT_S, with a count) and their
end is the "recovered" message. An entry without a condition is a one-shot alert. Templates are
`str.format` strings over the facts of the event (`facts()`); a missing fact prints as "?".
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from libs.common.clock import to_ist
from libs.common.models import CloseRecord
from libs.common.money import fmt_inr, to_paise
from libs.common.settings import Settings


class Severity(StrEnum):
    CRITICAL = "critical"  # money at risk now: a person must act
    WARNING = "warning"  # protection degraded: be ready to act
    INFO = "info"  # something finished (a close)
    RECOVERED = "recovered"  # a condition ended


@dataclass(frozen=True, slots=True)
class Rule:
    severity: Severity
    title: str
    body: str = ""
    action: str = ""
    condition: str = ""  # condition id template; "" = a one-shot alert
    ends: bool = False  # this type ends `condition` (its recovered message)
    clears: tuple[str, ...] = ()  # conditions this event ends without a message of their own


_WAIT_FEED = (
    "Nothing yet: the feed reconnects by itself. Check {health_cmd}. If it is still down after 5 minutes, "
    "close at-risk positions by hand with the emergency API."
)
_CLOSE_BY_HAND = "Close it by hand: {close_cmd}"
_SYMBOL_CONDITIONS = ("unmonitored:{symbol}", "close_failed:{symbol}", "close_unknown:{symbol}")

ALERTS: dict[str, Rule] = {
    # Derived by the alerts service from Redis state (services/alerts/checks.py).
    "feed_down": Rule(
        Severity.WARNING,
        "Feed down for {down_for}",
        "The Upstox WebSocket has been down since {since} ({attempts} reconnect attempts; last error: {error}). "
        "SL/TP keep running on cached prices for {open_positions} open position(s).",
        _WAIT_FEED,
        condition="feed_down",
    ),
    "feed_recovered": Rule(
        Severity.RECOVERED,
        "Feed live again",
        "The Upstox WebSocket is live again after {lasted} down; SL/TP run on live prices.",
        condition="feed_down",
        ends=True,
    ),
    "stale_prices": Rule(
        Severity.WARNING,
        "{count} open position(s) on stale prices",
        "SL/TP are checked on prices older than {stale_after_s} s: {positions}.",
        "Check {health_cmd}; watch for [SL]/[TP]. Be ready to close by hand: a price older than {ttl_s} s "
        "expires and the position is no longer monitored.",
        condition="stale_prices",
    ),
    "stale_prices_recovered": Rule(
        Severity.RECOVERED,
        "Prices of open positions fresh again",
        "Every open position has a fresh price again.",
        condition="stale_prices",
        ends=True,
    ),
    "feed_token_rejected": Rule(
        Severity.CRITICAL,
        "Upstox rejects the access token",
        "The feed cannot connect: {error}. No live prices until a valid token is set; SL/TP run on cached prices.",
        "Renew it without a restart: make login (or make token-set < token.txt); it expires daily at 03:30 IST. "
        "curl -s http://127.0.0.1:{api_port}/api/v1/monitoring/status shows whether it works.",
        condition="feed_token",
    ),
    "feed_token_ok": Rule(
        Severity.RECOVERED,
        "Upstox accepts the access token again",
        "The feed is connected with the access token.",
        condition="feed_token",
        ends=True,
    ),
    "heartbeat_lost": Rule(
        Severity.CRITICAL,
        "{service} is not running",
        "No heartbeat from the {service} service for {age} (it beats every {interval_s} s).",
        "make status, then make restart (Docker: docker compose restart {service}); its log: make logs-{service}.",
        condition="heartbeat:{service}",
    ),
    "heartbeat_back": Rule(
        Severity.RECOVERED,
        "{service} is running again",
        "The {service} service beats again.",
        condition="heartbeat:{service}",
        ends=True,
    ),
    # Events from the `events` stream.
    "unmonitored": Rule(
        Severity.CRITICAL,
        "Can't monitor {symbol} - no fresh prices",
        "The cached price of {symbol} expired (Layer 3): SL {stop_loss} / TP {take_profit} are not checked.",
        _CLOSE_BY_HAND,
        condition="unmonitored:{symbol}",
    ),
    "monitored_again": Rule(
        Severity.RECOVERED,
        "Monitoring {symbol} again",
        "A {price_source} price of {symbol} is available again; SL/TP are checked.",
        condition="unmonitored:{symbol}",
        ends=True,
    ),
    "instrument_silent": Rule(
        Severity.WARNING,
        "{symbol} stopped ticking",
        "{symbol}: {reason}. Its price now ages from its last tick; SL/TP act on it as a cached price.",
        "Check whether {symbol} is halted or suspended; if its position is at risk, close it by hand: {close_cmd}",
        condition="silent:{symbol}",
    ),
    "instrument_ticking": Rule(
        Severity.RECOVERED,
        "{symbol} ticking again",
        "{symbol} trades again; its price is live.",
        condition="silent:{symbol}",
        ends=True,
    ),
    "closed": Rule(
        Severity.INFO,
        "{symbol} closed ({reason})",
        "Closed by {closed_by}: {quantity} at {exit_price} ({price_source} price{age}), entry {entry_price}, "
        "P&L {pnl}. Order {order_id}.",
        clears=_SYMBOL_CONDITIONS,
    ),
    "close_failed": Rule(
        Severity.CRITICAL,
        "Close of {symbol} failed",
        "The {reason} close by {by} failed: {error}. The position stays open and the close is retried.",
        "If it keeps failing, close it by hand: {close_cmd}",
        condition="close_failed:{symbol}",
    ),
    "close_unknown": Rule(
        Severity.CRITICAL,
        "Close of {symbol}: outcome unknown",
        "The {reason} close order by {by} got no clear answer: {error}. No second order is sent; the guard "
        "settles it from the broker's orders by its tag.",
        "Check the order at the broker; the position stays closing until it is settled.",
        condition="close_unknown:{symbol}",
    ),
    "close_unrecorded": Rule(
        Severity.CRITICAL,
        "{symbol} filled but not recorded",
        "A close order of {symbol} filled at {exit_price} after its claim was settled elsewhere.",
        "Check the position and the broker's orders: GET /api/v1/positions/{symbol}.",
    ),
    "reopened": Rule(
        Severity.WARNING,
        "{symbol} reopened",
        "A close of {symbol} stopped before its order filled at the broker (or filled only part); the position "
        "is guarded again for the {quantity} the broker holds.",
    ),
    "reduced": Rule(
        Severity.WARNING,
        "{symbol}: the broker holds less than guarded",
        "The broker holds {quantity} of {symbol}: sold outside the guard, or only part of a close filled. The guard "
        "protects the {quantity} held; nothing more is ever sold.",
        "Check that this was intended.",
    ),
    "removed": Rule(
        Severity.INFO,
        "{symbol} no longer guarded",
        "The position on {symbol} was removed through the API without an order; its SL/TP are no longer checked.",
    ),
    "malformed": Rule(
        Severity.WARNING,
        "Corrupt record for {symbol}",
        "The monitor skips position {symbol}: {error}.",
        "Fix or delete position:{symbol} in Redis; the position is not protected meanwhile.",
    ),
    # For the events the broker-truth, safety-net, token and static-IP work emit. To alert on them, record the event
    # with `libs.common.events` (`add_event(pipe, encode_event(kind, at, symbol, **fields))`) under these kinds, with
    # the fields the templates name: `closed` with `record.closed_by` "external"/"safety_net" (the close record);
    # safety_net_failed(symbol, error); safety_net_placed(symbol); token_expiring(token, expires_at);
    # token_expired(token, expires_at, effect);
    # token_rejected(token, error); token_ok(token); orders_blocked(reason); orders_unblocked.
    "external_close": Rule(
        Severity.WARNING,
        "{symbol} was closed outside the guard",
        "The broker holds none of {symbol} and no order of the guard sold it (closed in the Upstox app, by the bot "
        "or by the broker's square-off; exit taken as {exit_price}, P&L {pnl}). The guard stops protecting it.",
        "Check that this close was intended.",
        clears=_SYMBOL_CONDITIONS,
    ),
    "safety_net_fired": Rule(
        Severity.WARNING,
        "Safety net closed {symbol}",
        "The stop-loss kept at the broker (GTT) closed {symbol} at {exit_price}, P&L {pnl}.",
        "Nothing: the position is closed. Check why the guard itself did not close it first.",
        clears=_SYMBOL_CONDITIONS,
    ),
    "safety_net_failed": Rule(
        Severity.CRITICAL,
        "No safety net for {symbol}",
        "The stop-loss at the broker (GTT) for {symbol} could not be placed or updated: {error}.",
        "The guard still protects it while it runs; place a stop-loss at the broker by hand if it lasts.",
        condition="safety_net:{symbol}",
    ),
    "safety_net_placed": Rule(
        Severity.RECOVERED,
        "Safety net in place for {symbol}",
        "The stop-loss at the broker (GTT) for {symbol} is placed.",
        condition="safety_net:{symbol}",
        ends=True,
    ),
    "token_expiring": Rule(
        Severity.WARNING,
        "Upstox token expires soon",
        "The {token} token expires at {expires_at}.",
        "Renew it: python -m services.api login (or POST /api/v1/auth/token).",
        condition="token",
    ),
    "token_expired": Rule(
        Severity.CRITICAL,
        "Upstox token expired",
        "The {token} token expired at {expires_at}: {effect}.",
        "Renew it now: python -m services.api login (or POST /api/v1/auth/token).",
        condition="token",
    ),
    "token_rejected": Rule(
        Severity.CRITICAL,
        "Upstox token rejected",
        "Upstox rejected the {token} token: {error}.",
        "Set a new one: python -m services.api token set (or POST /api/v1/auth/token).",
        condition="token",
    ),
    "token_ok": Rule(
        Severity.RECOVERED,
        "Upstox token works again",
        "The {token} token is accepted.",
        condition="token",
        ends=True,
    ),
    "orders_blocked": Rule(
        Severity.CRITICAL,
        "Orders blocked",
        "Upstox refuses orders from this machine: {reason}. Closes cannot reach the broker.",
        "Register this machine's static IP with Upstox, or close positions from another device.",
        condition="orders_blocked",
    ),
    "orders_unblocked": Rule(
        Severity.RECOVERED,
        "Orders accepted again",
        "Upstox accepts orders from this machine again.",
        condition="orders_blocked",
        ends=True,
    ),
    # F&O expiry day (services/monitor/expiry.py).
    "expiry_warning": Rule(
        Severity.WARNING,
        "{symbol} expires today",
        "{symbol} stops trading at 15:30 IST, in {minutes_left} min, and {quantity} {side} are still open.",
        "Close or roll it before 15:30: {close_cmd}",
    ),
    "expired_open": Rule(
        Severity.CRITICAL,
        "{symbol} expired while still open",
        "{symbol} stopped trading at 15:30 IST with {quantity} {side} still open: the guard can no longer close "
        "it; the exchange settles it.",
        "Check the settlement at the broker, then stop guarding it: DELETE /api/v1/positions/{symbol}",
    ),
    # Sent by POST /api/v1/alerts/test.
    "test": Rule(Severity.INFO, "Test alert", "Alerts from the Upstox resilience guard reach you here."),
}


@dataclass(frozen=True, slots=True)
class Alert:
    """One rendered message, as stored in the `alerts:outbox` stream."""

    type: str
    severity: Severity
    title: str
    body: str
    action: str
    at: float

    def text(self) -> str:
        """The message body a person reads: details, what to do, when."""
        lines = [self.body] if self.body else []
        if self.action:
            lines.append(f"What to do: {self.action}")
        lines.append(f"At {to_ist(self.at):%Y-%m-%d %H:%M:%S} IST.")
        return "\n".join(lines)

    def heading(self) -> str:
        return f"[{self.severity.upper()}] {self.title}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Alert:
        data = json.loads(text)
        return cls(**{**data, "severity": Severity(data["severity"])})


class _Facts(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def fill(template: str, facts: dict[str, Any]) -> str:
    """`template` with `facts` filled in ("?" for a missing one)."""
    return template.format_map(_Facts(facts))


def render(alert_type: str, facts: dict[str, Any], at: float, folded: int = 0) -> Alert:
    """The message of `alert_type` over `facts`; `folded` changes not sent on their own are counted in it."""
    rule = ALERTS[alert_type]
    title = fill(rule.title, facts)
    if folded:
        title += f" ({folded} more change{'s' if folded > 1 else ''} since the last message)"
    return Alert(alert_type, rule.severity, title, fill(rule.body, facts), fill(rule.action, facts), at)


def alert_type(event: dict[str, Any]) -> str:
    """The table entry of an event: its kind, refined where one kind has outcomes that ask different things."""
    kind = str(event.get("kind", ""))
    if kind == "closed":
        closed_by = str((event.get("record") or {}).get("closed_by", ""))
        return {"external": "external_close", "safety_net": "safety_net_fired"}.get(closed_by, "closed")
    if kind == "close_failed" and event.get("outcome") == "unknown":
        return "close_unknown"
    return kind


_MONEY = (*CloseRecord.MONEY_FIELDS, "stop_loss", "take_profit")  # a close record, and the position it closed


def facts(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The values the templates use: the event's fields, its close record's, money as ₹ and the commands."""
    out: dict[str, Any] = {k: v for k, v in event.items() if not isinstance(v, dict)}
    for part in ("record", "position"):  # a close record wins over the position it closed
        if isinstance(event.get(part), dict):
            out.update({k: v for k, v in event[part].items() if part == "record" or k not in out})
    age = out.get("price_age_s")
    out["age"] = f", {age:.0f} s old" if isinstance(age, int | float) else ""
    for field in _MONEY:
        if isinstance(out.get(field), int | float):
            out[field] = fmt_inr(to_paise(out[field]))
        elif field in out and out[field] is None:
            out[field] = "none"
    symbol = str(event.get("symbol") or "")
    out.update(commands(settings, symbol))
    if isinstance(event.get("at"), int | float):
        out["time"] = f"{to_ist(float(event['at'])):%H:%M:%S} IST"
    return out


def commands(settings: Settings, symbol: str = "") -> dict[str, str]:
    """The exact commands the alerts quote: connection health and the emergency close of `symbol`."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    base = f"http://{host}:{settings.api_port}/api/v1/monitoring"
    key = ' -H "X-API-Key: $API_KEY"' if settings.api_key.get_secret_value() else ""  # the api requires it when set
    body = json.dumps({"symbol": symbol or "SYMBOL", "reason": "emergency"})
    return {
        "api_port": str(settings.api_port),
        "health_cmd": f"curl -s {base}/connection-health",
        "close_cmd": (
            f"curl -s -X POST {base}/emergency-close-position -H 'Content-Type: application/json'{key} "
            f"-d {shlex.quote(body)}"
        ),
    }
