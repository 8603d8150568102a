"""Orders: place (v2, v3), cancel, details, the order book, history and the day's trades."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from loguru import logger

from services.sim import errors
from services.sim.deps import SimDep, SimulatorPort, TokenDep
from services.sim.errors import UpstoxError, success
from services.sim.orders import Order

router = APIRouter()

GATEWAY_TIMEOUT = "<html><body><h1>504 Gateway Time-out</h1></body></html>"


@router.post("/v2/order/place")
async def place_v2(request: Request, sim: SimDep, token: TokenDep) -> Any:
    placed, _ = await _place(sim, request, token, 2)
    return _reply(sim, success({"order_id": placed[0].order_id}))


@router.post("/v3/order/place")
async def place_v3(request: Request, sim: SimDep, token: TokenDep) -> Any:
    placed, latency_ms = await _place(sim, request, token, 3)
    return _reply(sim, success({"order_ids": [o.order_id for o in placed]}, metadata={"latency": int(latency_ms)}))


async def _place(sim: SimulatorPort, request: Request, token: str, version: int) -> tuple[list[Order], float]:
    started = sim.clock.monotonic()
    sim.orders.check_rate(token)
    placed = sim.orders.place(await json_body(request), version=version)
    for order in placed:
        logger.info(
            f"sim order {order.order_id} {order.transaction_type} {order.quantity} "
            f"{order.instrument.trading_symbol} {order.order_type}: {order.status}"
        )
    await sim.faults.hold_reply()  # reply_delay: filled above, the answer waits
    return placed, (sim.clock.monotonic() - started) * 1000


def _reply(sim: SimulatorPort, body: dict[str, Any]) -> Any:
    if sim.faults.active("reply_lost"):  # the order stands; only the gateway's answer is lost
        logger.warning("sim fault reply_lost: the order was placed, the reply is a 504")
        return Response(GATEWAY_TIMEOUT, 504, media_type="text/html")
    return body


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise UpstoxError(400, errors.INVALID_INPUT, "Request body must be JSON") from None


@router.delete("/v2/order/cancel")
@router.delete("/v3/order/cancel")
async def cancel(sim: SimDep, token: TokenDep, order_id: Annotated[str, Query()]) -> dict[str, Any]:
    sim.orders.check_rate(token)
    order = sim.orders.cancel(order_id)
    return success({"order_id": order.order_id}, metadata={"latency": 1})


@router.get("/v2/order/details")
async def order_details(sim: SimDep, _: TokenDep, order_id: Annotated[str, Query()]) -> dict[str, Any]:
    return success(sim.orders.get(order_id).as_dict())


@router.get("/v2/order/retrieve-all")
async def order_book(sim: SimDep, _: TokenDep) -> dict[str, Any]:
    return success([o.as_dict() for o in sim.orders.orders.values()])


@router.get("/v2/order/history")
async def order_history(
    sim: SimDep,
    _: TokenDep,
    order_id: Annotated[str | None, Query()] = None,
    tag: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    return success(sim.orders.history(order_id=order_id, tag=tag))


@router.get("/v2/order/trades/get-trades-for-day")
async def trades_for_day(sim: SimDep, _: TokenDep) -> dict[str, Any]:
    return success(list(sim.orders.trades))
