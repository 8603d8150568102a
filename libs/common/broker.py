"""The broker interface that closes positions, and its two adapters.

`UpstoxBroker` sends a MARKET order through `/v3/order/place` (the order host) with a `tag` naming the
close, then reads the fill from `/v2/order/details`. With no token it talks to the simulator, so the
whole path runs in tests and demos. `PaperBroker` fills at the price the decision used.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from libs.common.credentials import Credentials
from libs.common.models import Position, Side
from libs.common.money import Paise, to_paise
from libs.common.settings import Settings

_FILLED = "complete"
_DEAD = {"rejected", "cancelled"}


@dataclass(frozen=True, slots=True)
class Fill:
    """A completed closing order."""

    order_id: str
    price: Paise


class BrokerError(Exception):
    """The broker did not close the position. `status_code` is what the API answers (502 or 503)."""

    def __init__(self, message: str, *, status_code: int = 502) -> None:
        super().__init__(message)
        self.status_code = status_code


class BrokerOutcomeUnknown(BrokerError):
    """The order may have reached the broker but its result is unknown (a timeout after sending, a fill that
    was not confirmed in time). Sending another order could close twice: settle it by the order's tag instead
    (`find_by_tag`, i.e. `Closer.reconcile`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=503)


class _OrderDead(BrokerError):
    """The broker rejected or cancelled the order: definitely not filled."""


class Broker(Protocol):
    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        """Send the order that flattens `position`, wait for its fill.

        Raises BrokerError when no order filled, BrokerOutcomeUnknown when one may have (reconcile by tag).
        """
        ...

    async def find_by_tag(self, tag: str) -> Fill | None:
        """The filled order carrying `tag`, None if the broker has none (used to reconcile after a crash).

        Raises BrokerError when the broker cannot be asked.
        """
        ...

    async def aclose(self) -> None: ...


class PaperBroker:
    """Fills every close at the decision price (no broker involved)."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}
        self._seq = 0

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        if decision_price is None:
            raise BrokerError("paper broker needs a price to fill at and none is cached", status_code=503)
        self._seq += 1
        fill = Fill(order_id=f"paper-{self._seq}", price=decision_price)
        self._fills[tag] = fill
        return fill

    async def find_by_tag(self, tag: str) -> Fill | None:
        return self._fills.get(tag)

    async def aclose(self) -> None:
        return None


def _first_error(body: Any) -> str:
    try:
        err = body["errors"][0]
        return f"{err.get('error_code') or err.get('errorCode')}: {err.get('message')}"
    except (KeyError, IndexError, TypeError):
        return str(body)[:200]


class UpstoxBroker:
    """Closes through Upstox REST (or the simulator, which speaks the same protocol)."""

    def __init__(
        self, settings: Settings, credentials: Credentials | None = None, *, fill_timeout_s: float = 5.0
    ) -> None:
        self._settings = settings
        self._credentials = credentials or Credentials(settings)
        self._fill_timeout_s = fill_timeout_s
        verify: str | bool = settings.tls_ca_file or True
        self._http = httpx.AsyncClient(
            timeout=settings.broker_timeout_s,
            verify=verify,
            headers={"Accept": "application/json"},
        )

    async def _auth(self) -> dict[str, str]:
        # read at the moment of use: a token swapped in a second ago is the one sent
        return {"Authorization": f"Bearer {await self._credentials.access()}"}

    async def _call(self, method: str, url: str, *, may_act: bool = False, **kw: Any) -> Any:
        headers = await self._auth()
        try:
            resp = await self._http.request(method, url, headers=headers, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
            raise BrokerError(f"broker unreachable: {type(exc).__name__}", status_code=503) from None
        except httpx.HTTPError as exc:
            if may_act:  # the request may have arrived and acted; only its answer is missing
                raise BrokerOutcomeUnknown(f"no answer from the broker: {type(exc).__name__}") from None
            raise BrokerError(f"broker unreachable: {type(exc).__name__}", status_code=503) from None
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 500 or resp.status_code == 429:
            raise BrokerError(f"broker answered {resp.status_code} ({_first_error(body)})", status_code=503)
        if resp.status_code >= 400:
            raise BrokerError(f"broker rejected the request: {resp.status_code} ({_first_error(body)})")
        return body

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        order = {
            "quantity": position.quantity,
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
            "slice": False,
        }
        body = await self._call("POST", f"{self._settings.order_base}/v3/order/place", may_act=True, json=order)
        try:
            order_id = str(body["data"]["order_ids"][0])
        except (KeyError, IndexError, TypeError):
            raise BrokerOutcomeUnknown(f"unexpected order response: {str(body)[:200]}") from None
        try:
            return await self._wait_for_fill(order_id)
        except (_OrderDead, BrokerOutcomeUnknown):
            raise
        except BrokerError as exc:  # placed, but the fill is unconfirmed: it may still fill
            raise BrokerOutcomeUnknown(f"order {order_id} placed, fill unconfirmed ({exc})") from None

    async def _wait_for_fill(self, order_id: str) -> Fill:
        deadline = asyncio.get_running_loop().time() + self._fill_timeout_s
        while True:
            body = await self._call("GET", f"{self._settings.api_base}/v2/order/details", params={"order_id": order_id})
            fill = _fill_of(body.get("data") or {})
            if fill is not None:
                return fill
            status = str((body.get("data") or {}).get("status", ""))
            if status in _DEAD:
                reason = (body.get("data") or {}).get("status_message") or status
                raise _OrderDead(f"order {order_id} {status}: {reason}")
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"order {order_id} not filled within {self._fill_timeout_s}s (status {status})")
            await asyncio.sleep(0.1)

    async def find_by_tag(self, tag: str) -> Fill | None:
        body = await self._call("GET", f"{self._settings.api_base}/v2/order/retrieve-all")
        for order in body.get("data") or []:
            if order.get("tag") == tag:
                fill = _fill_of(order)
                if fill is not None:
                    return fill
                if order.get("status") not in _DEAD:
                    return await self._wait_for_fill(str(order["order_id"]))
        return None

    async def aclose(self) -> None:
        await self._http.aclose()


def _fill_of(order: dict[str, Any]) -> Fill | None:
    if order.get("status") != _FILLED or order.get("average_price") in (None, ""):
        return None
    return Fill(order_id=str(order["order_id"]), price=to_paise(order["average_price"]))


def create_broker(settings: Settings, credentials: Credentials) -> Broker:
    """The broker the settings choose (`BROKER=upstox` talks to the simulator in simulator mode)."""
    return PaperBroker() if settings.broker == "paper" else UpstoxBroker(settings, credentials)
