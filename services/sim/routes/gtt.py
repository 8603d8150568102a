"""The four GTT calls (api.upstox.com); place, modify and cancel count in the order rate limits."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from loguru import logger

from services.sim.deps import SimDep, SimulatorPort, TokenDep
from services.sim.errors import success
from services.sim.routes.orders import GATEWAY_TIMEOUT, json_body

router = APIRouter()


async def _body(sim: SimulatorPort, request: Request, token: str) -> Any:
    sim.orders.check_rate(token)
    return await json_body(request)


@router.post("/v3/order/gtt/place")
async def gtt_place(request: Request, sim: SimDep, token: TokenDep) -> Any:
    gtt = sim.gtt.place(await _body(sim, request, token))
    logger.info(f"sim GTT {gtt.gtt_order_id} placed: {gtt.instrument.trading_symbol} {gtt.quantity}")
    if sim.faults.active("reply_lost"):  # the GTT stands; only the gateway's answer is lost
        return Response(GATEWAY_TIMEOUT, 504, media_type="text/html")
    return success({"gtt_order_ids": [gtt.gtt_order_id]}, metadata={"latency": 1})


@router.put("/v3/order/gtt/modify")
async def gtt_modify(request: Request, sim: SimDep, token: TokenDep) -> dict[str, Any]:
    gtt = sim.gtt.modify(await _body(sim, request, token))
    return success({"gtt_order_ids": [gtt.gtt_order_id]}, metadata={"latency": 1})


@router.delete("/v3/order/gtt/cancel")
async def gtt_cancel(request: Request, sim: SimDep, token: TokenDep) -> dict[str, Any]:
    gtt = sim.gtt.cancel(await _body(sim, request, token))
    logger.info(f"sim GTT {gtt.gtt_order_id} cancelled")
    return success({"gtt_order_ids": [gtt.gtt_order_id]}, metadata={"latency": 1})


@router.get("/v3/order/gtt")
async def gtt_get(sim: SimDep, _: TokenDep, gtt_order_id: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    return success(sim.gtt.listed(gtt_order_id))
