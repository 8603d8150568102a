"""The simulator's REST side (Upstox endpoints) and its `/sim/` control API, one FastAPI app.

Every Upstox endpoint checks `Authorization: Bearer <token>` (401 UDAPI100050 otherwise): `SIM_ACCESS_TOKEN`,
or a live token issued by `POST /sim/tokens` (services.sim.tokens); market data (authorize, the feed, LTP)
also takes an analytics token. The instrument file needs none, as at Upstox; nor does the control API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from loguru import logger
from pydantic import BaseModel, Field

from libs.common.money import rupees, to_paise
from services.sim import errors
from services.sim.errors import UpstoxError, error_response, success
from services.sim.faults import FaultKind
from services.sim.tokens import Scope, add_token_routes, profile_data

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from services.sim.server import Simulator

INSTRUMENT_FILES = ("complete", "NSE")
LTP_MAX_KEYS = 500


def bearer(request: Request) -> str:
    """The request's Bearer token when it is a live access token; else 401 UDAPI100050."""
    return _bearer(request, "account")


def market_bearer(request: Request) -> str:
    """The request's Bearer token when it may read market data (a live access or analytics token)."""
    return _bearer(request, "market")


def _bearer(request: Request, scope: Scope) -> str:
    sim: Simulator = request.app.state.sim
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sim.token_ok(token.strip(), scope):
        raise errors.invalid_token()
    return token.strip()


Token = Annotated[str, Depends(bearer)]
MarketToken = Annotated[str, Depends(market_bearer)]

# Calls that must come from a registered static IP (place, modify, cancel, multi-order, exit-all, GTT).
_ORDER_CALL_MARKERS = (
    "/order/place", "/order/modify", "/order/cancel", "/order/multi", "/order/gtt", "/positions/exit"
)  # fmt: skip


def is_order_call(path: str, method: str) -> bool:
    return method != "GET" and any(marker in path for marker in _ORDER_CALL_MARKERS)


def create_app(sim: Simulator) -> FastAPI:
    """The REST + control app bound to one running `Simulator`."""
    app = FastAPI(title="Upstox simulator", docs_url="/sim/docs", openapi_url="/sim/openapi.json", redoc_url=None)
    app.state.sim = sim

    @app.exception_handler(UpstoxError)
    async def _upstox_error(_: Request, exc: UpstoxError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        path = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        if request.url.path.startswith("/sim/"):
            return JSONResponse({"detail": exc.errors()}, status_code=422)
        return error_response(UpstoxError(400, errors.INVALID_INPUT, str(first.get("msg", "Invalid input")), path))

    @app.middleware("http")
    async def _rest_down(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith("/v3/order/gtt"):
            sim.gtt.calls += 1  # every GTT call that reached the "broker", answered or refused
        if sim.faults.active("rest_down") and not request.url.path.startswith("/sim/"):
            return error_response(errors.rest_down())
        if is_order_call(request.url.path, request.method):
            if sim.faults.active("ip_block"):
                sim.blocked_order_calls += 1
                return error_response(errors.ip_blocked())
            required = sim.settings.sim_require_algo_name
            if required and request.headers.get("x-algo-name") != required:
                return error_response(errors.invalid_algo_name())
        return await call_next(request)

    # --- market data feed ----------------------------------------------------------------------
    @app.get("/v3/feed/market-data-feed/authorize")
    async def authorize(request: Request, _: MarketToken) -> dict[str, Any]:
        if sim.faults.active("auth"):
            raise errors.invalid_token()
        uri = sim.authorized_uri(request.url.hostname or sim.settings.sim_host)
        return success({"authorized_redirect_uri": uri, "authorizedRedirectUri": uri})

    @app.websocket("/v3/feed/market-data-feed")
    async def feed_redirect(websocket: WebSocket) -> None:
        # Upstox answers the upgrade with a redirect to the feeder; the client must follow it.
        header = websocket.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not sim.token_ok(token.strip(), "market") or sim.faults.active("auth"):
            await websocket.send_denial_response(
                JSONResponse(errors.error_body(errors.INVALID_TOKEN, "Invalid token used to access API"), 401)
            )
            return
        location = sim.authorized_uri(websocket.url.hostname or sim.settings.sim_host)
        await websocket.send_denial_response(Response(status_code=307, headers={"location": location}))

    # --- account and orders ------------------------------------------------------------------
    @app.get("/v2/user/profile")
    async def profile(_: Token) -> dict[str, Any]:
        return success(profile_data())

    async def _place(request: Request, token: str, version: int) -> tuple[list[Any], float]:
        started = sim.clock.monotonic()
        sim.orders.check_rate(token)
        try:
            body = await request.json()
        except ValueError:
            raise UpstoxError(400, errors.INVALID_INPUT, "Request body must be JSON") from None
        placed = sim.orders.place(body, version=version)
        for order in placed:
            logger.info(
                f"sim order {order.order_id} {order.transaction_type} {order.quantity} "
                f"{order.instrument.trading_symbol} {order.order_type}: {order.status}"
            )
        await sim.faults.hold_reply()  # reply_delay: filled above, the answer waits
        return placed, (sim.clock.monotonic() - started) * 1000

    def _reply(body: dict[str, Any]) -> Any:
        if sim.faults.active("reply_lost"):  # the order stands; only the gateway's answer is lost
            logger.warning("sim fault reply_lost: the order was placed, the reply is a 504")
            return Response("<html><body><h1>504 Gateway Time-out</h1></body></html>", 504, media_type="text/html")
        return body

    @app.post("/v2/order/place")
    async def place_v2(request: Request, token: Token) -> Any:
        placed, _ = await _place(request, token, 2)
        return _reply(success({"order_id": placed[0].order_id}))

    @app.post("/v3/order/place")
    async def place_v3(request: Request, token: Token) -> Any:
        placed, latency_ms = await _place(request, token, 3)
        return _reply(success({"order_ids": [o.order_id for o in placed]}, metadata={"latency": int(latency_ms)}))

    @app.delete("/v2/order/cancel")
    @app.delete("/v3/order/cancel")
    async def cancel(token: Token, order_id: Annotated[str, Query()]) -> dict[str, Any]:
        sim.orders.check_rate(token)
        order = sim.orders.cancel(order_id)
        return success({"order_id": order.order_id}, metadata={"latency": 1})

    @app.get("/v2/order/details")
    async def order_details(_: Token, order_id: Annotated[str, Query()]) -> dict[str, Any]:
        return success(sim.orders.get(order_id).as_dict())

    @app.get("/v2/order/retrieve-all")
    async def order_book(_: Token) -> dict[str, Any]:
        return success([o.as_dict() for o in sim.orders.orders.values()])

    @app.get("/v2/order/history")
    async def order_history(
        _: Token, order_id: Annotated[str | None, Query()] = None, tag: Annotated[str | None, Query()] = None
    ) -> dict[str, Any]:
        return success(sim.orders.history(order_id=order_id, tag=tag))

    @app.get("/v2/order/trades/get-trades-for-day")
    async def trades_for_day(_: Token) -> dict[str, Any]:
        return success(list(sim.orders.trades))

    _gtt_routes(app, sim)

    @app.get("/v2/user/ip")
    async def static_ips(_: Token) -> dict[str, Any]:
        return success(
            {
                "primary_ip": sim.settings.sim_host,
                "secondary_ip": None,
                "primary_ip_updated_at": None,
                "secondary_ip_updated_at": None,
            }
        )

    @app.get("/v2/portfolio/short-term-positions")
    async def positions(_: Token) -> dict[str, Any]:
        return success(sim.orders.position_rows())

    # --- quotes and instruments ----------------------------------------------------------------
    def _ltp(instrument_key: str, v3: bool) -> dict[str, Any]:
        data: dict[str, Any] = {}
        wanted = [k.strip() for k in instrument_key.split(",") if k.strip()]
        if len(wanted) > LTP_MAX_KEYS:
            raise UpstoxError(400, errors.INVALID_INPUT, f"at most {LTP_MAX_KEYS} instrument keys per request")
        for key in wanted:
            idx = sim.market.index.get(key)
            if idx is None:
                continue
            inst = sim.market.instruments[idx]
            quote = sim.market.quotes[idx]
            row: dict[str, Any] = {"last_price": rupees(quote.ltp), "instrument_token": key}
            if v3:
                row.update(ltq=quote.ltq, volume=quote.vtt, cp=rupees(quote.close))
            # Keyed SEGMENT:SYMBOL as Upstox does ("NSE_EQ:NHPC"; indices by name, "NSE_INDEX:Nifty 50").
            data[f"{inst.segment}:{inst.name if inst.is_index else inst.trading_symbol}"] = row
        return success(data)

    @app.get("/v2/market-quote/ltp")
    async def ltp_v2(_: MarketToken, instrument_key: Annotated[str, Query()]) -> dict[str, Any]:
        return _ltp(instrument_key, v3=False)

    @app.get("/v3/market-quote/ltp")
    async def ltp_v3(_: MarketToken, instrument_key: Annotated[str, Query()]) -> dict[str, Any]:
        return _ltp(instrument_key, v3=True)

    @app.get("/market-quote/instruments/exchange/{name}.json.gz")
    async def instrument_file(name: str) -> Response:
        if name not in INSTRUMENT_FILES:
            return Response(status_code=404)
        return Response(sim.instrument_file(), media_type="application/gzip")

    _control_routes(app, sim)
    add_token_routes(app, sim)
    return app


def _gtt_routes(app: FastAPI, sim: Simulator) -> None:
    """The four GTT calls (api.upstox.com); place/modify/cancel count in the order rate limits."""

    async def _body(request: Request, token: str) -> Any:
        sim.orders.check_rate(token)
        try:
            return await request.json()
        except ValueError:
            raise UpstoxError(400, errors.INVALID_INPUT, "Request body must be JSON") from None

    @app.post("/v3/order/gtt/place")
    async def gtt_place(request: Request, token: Token) -> Any:
        gtt = sim.gtt.place(await _body(request, token))
        logger.info(f"sim GTT {gtt.gtt_order_id} placed: {gtt.instrument.trading_symbol} {gtt.quantity}")
        if sim.faults.active("reply_lost"):  # the GTT stands; only the gateway's answer is lost
            return Response("<html><body><h1>504 Gateway Time-out</h1></body></html>", 504, media_type="text/html")
        return success({"gtt_order_ids": [gtt.gtt_order_id]}, metadata={"latency": 1})

    @app.put("/v3/order/gtt/modify")
    async def gtt_modify(request: Request, token: Token) -> dict[str, Any]:
        gtt = sim.gtt.modify(await _body(request, token))
        return success({"gtt_order_ids": [gtt.gtt_order_id]}, metadata={"latency": 1})

    @app.delete("/v3/order/gtt/cancel")
    async def gtt_cancel(request: Request, token: Token) -> dict[str, Any]:
        gtt = sim.gtt.cancel(await _body(request, token))
        logger.info(f"sim GTT {gtt.gtt_order_id} cancelled")
        return success({"gtt_order_ids": [gtt.gtt_order_id]}, metadata={"latency": 1})

    @app.get("/v3/order/gtt")
    async def gtt_get(_: Token, gtt_order_id: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        return success(sim.gtt.listed(gtt_order_id))


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


def _control_routes(app: FastAPI, sim: Simulator) -> None:
    @app.post("/sim/price")
    async def set_price(body: PriceControl) -> dict[str, Any]:
        if sim.market.by_symbol.get(body.symbol) is None:
            return JSONResponse({"detail": f"unknown symbol {body.symbol}"}, 404)  # type: ignore[return-value]
        if body.release:
            sim.market.release(body.symbol)
            return {"symbol": body.symbol, "pinned": False}
        if body.ltp is None:
            return JSONResponse({"detail": "give ltp, or release: true"}, 422)  # type: ignore[return-value]
        sim.market.set_price(body.symbol, to_paise(body.ltp))
        logger.info(f"sim control: {body.symbol} set to ₹{body.ltp:.2f} and pinned")
        return {"symbol": body.symbol, "ltp": rupees(to_paise(body.ltp)), "pinned": True}

    @app.post("/sim/instrument")
    async def instrument(body: InstrumentControl) -> dict[str, Any]:
        if sim.market.by_symbol.get(body.symbol) is None:
            return JSONResponse({"detail": f"unknown symbol {body.symbol}"}, 404)  # type: ignore[return-value]
        sim.market.halt(body.symbol, body.halted)
        logger.info(f"sim control: {body.symbol} {'halted' if body.halted else 'trading again'}")
        return {"symbol": body.symbol, "halted": body.halted}

    @app.post("/sim/trade")
    async def trade(body: TradeControl) -> dict[str, Any]:
        if sim.market.by_symbol.get(body.symbol) is None:
            return JSONResponse({"detail": f"unknown symbol {body.symbol}"}, 404)  # type: ignore[return-value]
        try:
            order = sim.orders.trade(body.symbol, body.side, body.quantity, body.product)
        except UpstoxError as exc:
            return JSONResponse({"detail": exc.message}, 422)  # type: ignore[return-value]
        detail = order.as_dict()
        if order.status != "complete":
            return JSONResponse({"detail": order.status_message or order.status, "order": detail}, 409)  # type: ignore[return-value]
        logger.info(f"sim trade outside the guard: {body.side} {body.quantity} {body.symbol} ({body.product})")
        rows = sim.orders.position_rows()
        position = next(r for r in rows if r["trading_symbol"] == body.symbol and r["product"] == body.product)
        return {"order": detail, "position": position}

    @app.post("/sim/faults")
    async def fault(body: FaultControl) -> dict[str, Any]:
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

    @app.post("/sim/market")
    async def market(body: MarketControl) -> dict[str, Any]:
        try:
            sim.market.force_status(body.status, body.segment)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, 422)  # type: ignore[return-value]
        return {"segment_status": sim.market.segment_status()}

    @app.post("/sim/step")
    async def step(body: StepControl) -> dict[str, Any]:
        moved = 0
        for _ in range(body.steps):
            moved += len(sim.market.step())
        return {"steps": sim.market.steps, "moved": moved}

    @app.get("/sim/orders")
    async def orders() -> list[dict[str, Any]]:
        # placed_at (epoch s, sub-second): when the order reached the simulator (`make bench` times the close path)
        return [{**o.as_dict(), "placed_at": o.placed_at} for o in sim.orders.orders.values()]

    @app.get("/sim/gtt")
    async def gtts() -> list[dict[str, Any]]:
        return sim.gtt.everything()

    @app.get("/sim/state")
    async def state() -> dict[str, Any]:
        return sim.state()

    @app.post("/sim/reset")
    async def reset() -> dict[str, Any]:
        sim.reset()
        return {"reset": True}
