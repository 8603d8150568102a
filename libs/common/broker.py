"""The broker interface that closes positions and reports what is held, and its two adapters.

`UpstoxBroker` sends a MARKET order through `/v3/order/place` (the order host) with a `tag` naming the
close and `slice: true` (above the exchange's freeze quantity it becomes child orders of at most the freeze
quantity, each followed to its end and summed; `X-Algo-Name` when `UPSTOX_ALGO_NAME` is set), then polls
`/v2/order/details` with backoff until the order is complete, rejected or cancelled (a partial fill comes back
as a `Fill` of fewer units). Calls are paced under Upstox's per-second and per-minute limits
(`libs.common.pacing`).
Hosts are resolved through `libs.common.dns` (system DNS, the fallback servers, the remembered address),
as the feed does. With no token it talks to the simulator, so the whole path runs in tests and demos.
`PaperBroker` fills at the price the decision used and has no positions to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from libs.common.clock import Clock, SystemClock
from libs.common.credentials import Credentials
from libs.common.dns import DnsFailure, HostResolver
from libs.common.instruments import guard_instruments
from libs.common.models import Position, Side
from libs.common.money import Paise, to_paise
from libs.common.pacing import Pacer
from libs.common.settings import Settings

_FILLED = "complete"
_DEAD = {"rejected", "cancelled", "not cancelled", "cancelled after market order"}
STATIC_IP_BLOCKED = "UDAPI1154"
INVALID_ALGO_NAME = "UDAPI1156"
_POLL_FIRST_S = 0.1
_POLL_MAX_S = 1.0
# Upstox order calls per user (unregistered algo): 10/s, 500/min; the windows are paced 20% / 5% longer so a
# request that travels faster than the one before it still arrives inside the broker's window.
ORDER_CALL_LIMITS = ((1.2, 10), (63.0, 500))
# The safety-net keeper's GTT calls may use half of each order window; the other half is kept for closes.
KEEPER_ORDER_SHARE = 0.5
# Upstox standard calls per user; its 500/min for them is from a third-party source and not paced here, so a
# burst of closes is not held back (fill polling backs off instead).
READ_CALL_LIMITS = ((1.2, 50),)
STATIC_IPS_CACHE_S = 60.0
MAX_SLICES = 25  # child orders one sliced order may become


# Monotonic s after which an order call must not leave this task (its close claim may be taken over by then).
_send_deadline: ContextVar[float | None] = ContextVar("send_deadline", default=None)


@contextlib.contextmanager
def sending_before(deadline_monotonic_s: float) -> Iterator[None]:
    """Order calls made inside refuse to go out after `deadline_monotonic_s` (time.monotonic), checked right
    before the request is written, after pacing and DNS: a closer that stalled there sends nothing."""
    token = _send_deadline.set(deadline_monotonic_s)
    try:
        yield
    finally:
        _send_deadline.reset(token)


@dataclass(frozen=True, slots=True)
class Fill:
    """What a closing order (or every order of one close tag) filled: `quantity` units at average `price`.
    `quantity` None means the whole quantity asked for (brokers that only fill completely)."""

    order_id: str
    price: Paise
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class Holding:
    """One row of the broker's day positions: net `quantity` (negative: short) of an instrument and product."""

    instrument_key: str
    product: str
    quantity: int
    trading_symbol: str = ""
    last_price: Paise | None = None
    average_price: Paise | None = None


class BrokerError(Exception):
    """The broker did not close the position. `status_code` is what the API answers (502 or 503)."""

    def __init__(self, message: str, *, status_code: int = 502) -> None:
        super().__init__(message)
        self.status_code = status_code


class BrokerOutcomeUnknown(BrokerError):
    """The order may have reached the broker but its result is unknown (a 5xx or timeout after sending, a fill
    that was not confirmed in time). Sending another order could close twice: settle it by the order's tag
    instead (`find_by_tag`, i.e. `Closer.reconcile`). `claim_id` is set by the closer that raised it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=503)
        self.claim_id = ""


class OrdersBlocked(BrokerError):
    """Order calls are refused for the configuration: 403 UDAPI1154 (this machine's IP is not the registered
    static IP) or UDAPI1156 (the algo name is missing or wrong). Retrying fast cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=503)


class OrderDead(BrokerError):
    """The broker rejected or cancelled the order with nothing filled: definitely not filled."""


class Broker(Protocol):
    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        """Send one order that sells (long) or buys back (short) `position.quantity`, wait until it ends.

        Returns the fill, which may be partial (`Fill.quantity` < asked: the rest was cancelled).
        Raises OrderDead/BrokerError when nothing filled, OrdersBlocked when order calls are refused for the
        static IP, BrokerOutcomeUnknown when an order may have been placed (settle by tag).
        """
        ...

    async def find_by_tag(self, tag: str) -> Fill | None:
        """Everything filled by the orders carrying `tag` (summed, average price), None if none filled.

        Waits (bounded) for an order of the tag still working. Raises BrokerError when the broker cannot be
        asked or an order is still working.
        """
        ...

    async def positions(self) -> list[Holding] | None:
        """The broker's day positions, None when this broker keeps none (paper). Raises BrokerError."""
        ...

    async def static_ips(self) -> dict[str, Any] | None:
        """The registered static IPs (`GET /v2/user/ip`), None when not applicable. Raises BrokerError."""
        ...

    async def remember_hosts(self) -> None:
        """Resolve the broker's hosts now, so a DNS outage finds their last good addresses remembered."""
        ...

    async def aclose(self) -> None: ...


class PaperBroker:
    """Fills every close at the decision price (no broker involved, no positions to check)."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}
        self._seq = 0

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        if decision_price is None:
            raise BrokerError("paper broker needs a price to fill at and none is cached", status_code=503)
        self._seq += 1
        fill = Fill(order_id=f"paper-{self._seq}", price=decision_price, quantity=position.quantity)
        self._fills[tag] = fill
        return fill

    async def find_by_tag(self, tag: str) -> Fill | None:
        return self._fills.get(tag)

    async def positions(self) -> list[Holding] | None:
        return None

    async def static_ips(self) -> dict[str, Any] | None:
        return None

    async def remember_hosts(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _first_error(body: Any) -> tuple[str, str]:
    """(error code, "code: message") of an Upstox error envelope."""
    try:
        err = body["errors"][0]
        code = str(err.get("error_code") or err.get("errorCode"))
        return code, f"{code}: {err.get('message')}"
    except (KeyError, IndexError, TypeError):
        return "", str(body)[:200]


class UpstoxBroker:
    """Closes through Upstox REST (or the simulator, which speaks the same protocol)."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials | None = None,
        *,
        fill_timeout_s: float | None = None,
        resolver: HostResolver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._credentials = credentials or Credentials(settings)
        self._fill_timeout_s = settings.broker_fill_timeout_s if fill_timeout_s is None else fill_timeout_s
        self._resolver = resolver or HostResolver.from_settings(settings, clock or SystemClock())
        self._static_ips: tuple[float, dict[str, Any] | None] | None = None
        self._instruments = guard_instruments(settings, clock)  # built now, not on a close's clock
        self._order_pacer = Pacer(*ORDER_CALL_LIMITS, background_share=KEEPER_ORDER_SHARE)
        self._read_pacer = Pacer(*READ_CALL_LIMITS)
        verify = ssl.create_default_context(cafile=settings.tls_ca_file or None)
        self._http = httpx.AsyncClient(
            timeout=settings.broker_timeout_s, verify=verify, headers={"Accept": "application/json"}, trust_env=False
        )

    async def _headers(self, *, order_call: bool) -> dict[str, str]:
        # read at the moment of use: a token swapped in a second ago is the one sent
        headers = {"Authorization": f"Bearer {await self._credentials.access()}"}
        if order_call and self._settings.upstox_algo_name:
            headers["X-Algo-Name"] = self._settings.upstox_algo_name
        return headers

    async def _route(self, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The URL to connect to (the host's address from our resolver), plus the Host header and TLS SNI that
        keep the host name."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            resolution = await self._resolver.resolve(host)
        except DnsFailure as exc:
            raise BrokerError(f"broker unreachable: {exc}", status_code=503) from None
        if resolution.address == host:
            return url, {}, {}
        address = f"[{resolution.address}]" if ":" in resolution.address else resolution.address
        netloc = f"{address}:{parts.port}" if parts.port else address
        headers = {"Host": parts.netloc}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return urlunsplit(parts._replace(netloc=netloc)), headers, extensions

    async def _call(self, method: str, url: str, *, order_call: bool = False, **kw: Any) -> Any:
        async with (self._order_pacer if order_call else self._read_pacer).slot():
            target, host_headers, extensions = await self._route(url)
            headers = {**(await self._headers(order_call=order_call)), **host_headers}
            deadline = _send_deadline.get()
            if order_call and deadline is not None and time.monotonic() > deadline:
                raise BrokerError(
                    "the close claim got too old before the order could go out; nothing sent", status_code=503
                )
            try:
                resp = await self._http.request(method, target, headers=headers, extensions=extensions, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
                raise BrokerError(f"broker unreachable: {type(exc).__name__}", status_code=503) from None
            except httpx.HTTPError as exc:
                if order_call:  # the request may have arrived and acted; only its answer is missing
                    raise BrokerOutcomeUnknown(f"no answer from the broker: {type(exc).__name__}") from None
                raise BrokerError(f"broker unreachable: {type(exc).__name__}", status_code=503) from None
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        code, described = _first_error(body)
        if code in (STATIC_IP_BLOCKED, INVALID_ALGO_NAME):
            raise OrdersBlocked(f"broker refused the order call: {resp.status_code} ({described})")
        if resp.status_code >= 500 and order_call:  # a gateway 502/504 says nothing about the order behind it
            raise BrokerOutcomeUnknown(f"broker answered {resp.status_code} ({described}); the order may stand")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise BrokerError(f"broker answered {resp.status_code} ({described})", status_code=503)
        if resp.status_code >= 400:
            raise BrokerError(f"broker rejected the request: {resp.status_code} ({described})")
        return body

    def _max_order_quantity(self, instrument_key: str) -> int | None:
        """The most one sliced order may carry (25 child orders of the freeze quantity, whole lots); None when
        the instrument is not known here (then the broker's own refusal is the limit)."""
        inst = self._instruments.by_key(instrument_key)
        if inst is None:
            return None
        return int(inst.freeze_quantity) * MAX_SLICES // inst.lot_size * inst.lot_size

    async def call(self, method: str, url: str, *, order_call: bool = False, **kw: Any) -> Any:
        """One REST call through this client (resolver, token, `X-Algo-Name` on order calls) for the broker's
        other features (the safety net's GTTs); raises like the close path (BrokerError and its subclasses)."""
        return await self._call(method, url, order_call=order_call, **kw)

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        # Above 25 x the freeze quantity one order cannot carry it all: sell that much now; the closer follows
        # the rest up in the same claim (as after a partial fill).
        cap = self._max_order_quantity(position.instrument_key)
        quantity = position.quantity if cap is None else min(position.quantity, cap)
        order: dict[str, Any] = {
            "quantity": quantity,
            "product": self._settings.order_product,
            "validity": "DAY",
            "price": 0,
            "tag": tag,
            "instrument_token": position.instrument_key,
            "order_type": "MARKET",
            "transaction_type": "SELL" if position.side is Side.LONG else "BUY",
            "disclosed_quantity": 0,
            "trigger_price": 0,
            "is_amo": False,
            # Above the exchange's freeze quantity the broker splits the order into child orders of at most the
            # freeze quantity (all under this tag); below it, one order as without slicing.
            "slice": True,
        }
        if self._settings.order_market_protection:  # -1: the broker's automatic band; a clipped rest is cancelled
            order["market_protection"] = self._settings.order_market_protection
        body = await self._call("POST", f"{self._settings.order_base}/v3/order/place", order_call=True, json=order)
        try:
            order_ids = [str(i) for i in body["data"]["order_ids"]]
        except (KeyError, TypeError):
            order_ids = []
        if not order_ids:
            raise BrokerOutcomeUnknown(f"unexpected order response: {str(body)[:200]}")
        ended = []
        for order_id in order_ids:
            try:
                ended.append(await self._until_done(order_id))
            except BrokerError as exc:  # placed, but its end is unconfirmed: it may still fill
                raise BrokerOutcomeUnknown(f"order {order_id} placed, fill unconfirmed ({exc})") from None
        fill = _sum_fills([f for f in map(_fill_of, ended) if f is not None])
        if fill is None:
            data = ended[-1]
            reason = data.get("status_message") or data.get("status")
            raise OrderDead(f"order {','.join(order_ids)} {data.get('status')}: {reason}")
        return fill

    async def _until_done(self, order_id: str) -> dict[str, Any]:
        """The order's details once it is complete, rejected or cancelled. Polls with backoff (0.1 s doubling
        to 1 s) so a close stays far inside the rate limits; a 429 or 5xx while polling is waited out.
        Raises BrokerError when the order is still working after the fill timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._fill_timeout_s
        delay_s = _POLL_FIRST_S
        last = "unknown"
        while True:
            try:
                body = await self._call(
                    "GET", f"{self._settings.api_base}/v2/order/details", params={"order_id": order_id}
                )
            except OrdersBlocked:
                raise
            except BrokerError as exc:
                if exc.status_code != 503:
                    raise
                last = str(exc)
            else:
                data = body.get("data") or {}
                last = str(data.get("status", ""))
                if last == _FILLED or last in _DEAD:
                    return dict(data)
            if loop.time() + delay_s > deadline:
                raise BrokerError(f"order {order_id} not done within {self._fill_timeout_s}s (status {last})")
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _POLL_MAX_S)

    async def find_by_tag(self, tag: str) -> Fill | None:
        body = await self._call("GET", f"{self._settings.api_base}/v2/order/retrieve-all")
        tagged = [o for o in body.get("data") or [] if o.get("tag") == tag]
        done = []
        for order in tagged:
            status = order.get("status")
            ended = status == _FILLED or status in _DEAD
            done.append(order if ended else await self._until_done(str(order["order_id"])))
        return _sum_fills([f for f in (_fill_of(o) for o in done) if f is not None])

    async def positions(self) -> list[Holding] | None:
        body = await self._call("GET", f"{self._settings.api_base}/v2/portfolio/short-term-positions")
        out = []
        for row in body.get("data") or []:
            try:
                last, average = row.get("last_price"), row.get("average_price")
                out.append(
                    Holding(
                        instrument_key=str(row["instrument_token"]),
                        product=str(row["product"]),
                        quantity=int(row["quantity"]),
                        trading_symbol=str(row.get("trading_symbol") or row.get("tradingsymbol") or ""),
                        last_price=to_paise(last) if last not in (None, "") else None,
                        average_price=to_paise(average) if average not in (None, "", 0, 0.0) else None,
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise BrokerError(f"unreadable position row from the broker: {exc}") from None
        return out

    async def static_ips(self) -> dict[str, Any] | None:
        """Cached for STATIC_IPS_CACHE_S: /status may be polled, the registration changes at most weekly."""
        if self._static_ips is not None and time.monotonic() - self._static_ips[0] < STATIC_IPS_CACHE_S:
            return self._static_ips[1]
        body = await self._call("GET", f"{self._settings.api_base}/v2/user/ip")
        data = body.get("data") if isinstance(body, dict) else None
        ips = dict(data) if isinstance(data, dict) else None
        self._static_ips = (time.monotonic(), ips)
        return ips

    async def remember_hosts(self) -> None:
        for base in {self._settings.api_base, self._settings.order_base}:
            with contextlib.suppress(DnsFailure):
                await self._resolver.resolve(urlsplit(base).hostname or "")

    async def aclose(self) -> None:
        await self._http.aclose()


def _fill_of(order: dict[str, Any]) -> Fill | None:
    """What an ended order filled (a cancelled order may have filled part), None when nothing."""
    filled = int(order.get("filled_quantity") or 0)
    if order.get("status") == _FILLED and not filled:
        filled = int(order.get("quantity") or 0)
    if filled <= 0 or order.get("average_price") in (None, "", 0, 0.0):
        return None
    return Fill(order_id=str(order["order_id"]), price=to_paise(order["average_price"]), quantity=filled)


def _sum_fills(fills: list[Fill]) -> Fill | None:
    """The fills of several orders (the child orders of a sliced close, or every order of a tag) as one:
    summed quantity at the average price; None when nothing filled."""
    if not fills:
        return None
    if len(fills) == 1:
        return fills[0]
    quantity = sum(f.quantity or 0 for f in fills)
    average = Paise(round(sum((f.quantity or 0) * f.price for f in fills) / quantity))
    return Fill(order_id=",".join(f.order_id for f in fills), price=average, quantity=quantity)


def create_broker(settings: Settings, credentials: Credentials, clock: Clock | None = None) -> Broker:
    """The broker the settings choose (`BROKER=upstox` talks to the simulator in simulator mode)."""
    return PaperBroker() if settings.broker == "paper" else UpstoxBroker(settings, credentials, clock=clock)
