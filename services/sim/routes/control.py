"""The `/sim/` control API (no token needed): prices, instruments, trades outside the guard, faults, market
status, steps, the books, state and reset."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import BaseModel, Field

from libs.common.money import rupees, to_paise
from services.sim.deps import SimDep
from services.sim.errors import UpstoxError
from services.sim.faults import FaultKind

router = APIRouter(prefix="/sim")


class PriceControl(BaseModel):
    symbol: str
    ltp: float | None = Field(None, gt=0)
    release: bool = False


class InstrumentControl(BaseModel):
    symbol: str
    halted: bool


class FaultControl(BaseModel):
    kind: FaultKind
    duration_s: float = Field(0.0, ge=0)
    code: Literal[1000, 1011] = 1000
    ratio: float | None = Field(None, ge=0, lt=1)  # partial_fill: the share that fills
    # slow_fill: how long orders rest open; reply_delay: how long an order's answer is held
    delay_s: float | None = Field(None, ge=0, le=600)
    message: str | None = Field(None, min_length=1, max_length=200)  # reject: the status_message
    orders: int = Field(0, ge=0, le=1000)  # partial_fill: only the window's first N orders (0: all)


class MarketControl(BaseModel):
    status: str | None = None
    segment: str | None = None


class TradeControl(BaseModel):
    symbol: str
    side: Literal["buy", "sell"]
    quantity: int = Field(gt=0)
    product: Literal["I", "D", "MTF"] = "I"


class StepControl(BaseModel):
    steps: int = Field(1, ge=1, le=10000)


def _unknown(symbol: str) -> JSONResponse:
    return JSONResponse({"detail": f"unknown symbol {symbol}"}, 404)


@router.post("/price")
async def set_price(sim: SimDep, body: PriceControl) -> Any:
    if sim.market.by_symbol.get(body.symbol) is None:
        return _unknown(body.symbol)
    if body.release:
        sim.market.release(body.symbol)
        return {"symbol": body.symbol, "pinned": False}
    if body.ltp is None:
        return JSONResponse({"detail": "give ltp, or release: true"}, 422)
    sim.market.set_price(body.symbol, to_paise(body.ltp))
    logger.info(f"sim control: {body.symbol} set to ₹{body.ltp:.2f} and pinned")
    return {"symbol": body.symbol, "ltp": rupees(to_paise(body.ltp)), "pinned": True}


@router.post("/instrument")
async def instrument(sim: SimDep, body: InstrumentControl) -> Any:
    if sim.market.by_symbol.get(body.symbol) is None:
        return _unknown(body.symbol)
    sim.market.halt(body.symbol, body.halted)
    logger.info(f"sim control: {body.symbol} {'halted' if body.halted else 'trading again'}")
    return {"symbol": body.symbol, "halted": body.halted}


@router.post("/trade")
async def trade(sim: SimDep, body: TradeControl) -> Any:
    if sim.market.by_symbol.get(body.symbol) is None:
        return _unknown(body.symbol)
    try:
        order = sim.orders.trade(body.symbol, body.side, body.quantity, body.product)
    except UpstoxError as exc:
        return JSONResponse({"detail": exc.message}, 422)
    detail = order.as_dict()
    if order.status != "complete":
        return JSONResponse({"detail": order.status_message or order.status, "order": detail}, 409)
    logger.info(f"sim trade outside the guard: {body.side} {body.quantity} {body.symbol} ({body.product})")
    rows = sim.orders.position_rows()
    position = next(r for r in rows if r["trading_symbol"] == body.symbol and r["product"] == body.product)
    return {"order": detail, "position": position}


@router.post("/faults")
async def fault(sim: SimDep, body: FaultControl) -> dict[str, Any]:
    await sim.inject(
        body.kind,
        body.duration_s,
        code=body.code,
        ratio=body.ratio,
        delay_s=body.delay_s,
        message=body.message,
        orders=body.orders,
    )
    return {"kind": body.kind, "duration_s": body.duration_s, "active": sim.faults.snapshot()}


@router.post("/market")
async def market(sim: SimDep, body: MarketControl) -> Any:
    try:
        sim.market.force_status(body.status, body.segment)
    except ValueError as exc:
        return JSONResponse({"detail": str(exc)}, 422)
    return {"segment_status": sim.market.segment_status()}


@router.post("/step")
async def step(sim: SimDep, body: StepControl) -> dict[str, Any]:
    moved = 0
    for _ in range(body.steps):
        moved += len(sim.market.step())
    return {"steps": sim.market.steps, "moved": moved}


@router.get("/orders")
async def orders(sim: SimDep) -> list[dict[str, Any]]:
    # placed_at (epoch s, sub-second): when the order reached the simulator (`make bench` times the close path)
    return [{**o.as_dict(), "placed_at": o.placed_at} for o in sim.orders.orders.values()]


@router.get("/gtt")
async def gtts(sim: SimDep) -> list[dict[str, Any]]:
    return sim.gtt.everything()


@router.get("/state")
async def state(sim: SimDep) -> dict[str, Any]:
    return sim.state()


@router.post("/reset")
async def reset(sim: SimDep) -> dict[str, Any]:
    sim.reset()
    return {"reset": True}
