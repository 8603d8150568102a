"""The simulator's REST side (Upstox endpoints) and its `/sim/` control API, one FastAPI app.

Every Upstox endpoint checks `Authorization: Bearer <token>` (401 UDAPI100050 otherwise): `SIM_ACCESS_TOKEN`,
or a live token issued by `POST /sim/tokens` (services.sim.tokens); market data (authorize, the feed, LTP)
also takes an analytics token. The instrument file needs none, as at Upstox; nor does the control API.
The endpoints live in services/sim/routes/, one router per resource; they reach the simulator through
`SimDep` (services/sim/deps.py), a narrow view of it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.sim import errors
from services.sim.deps import SimulatorPort
from services.sim.errors import UpstoxError, error_response
from services.sim.routes import account, control, gtt, login, market_data, orders

# Calls that must come from a registered static IP (place, modify, cancel, multi-order, exit-all, GTT).
_ORDER_CALL_MARKERS = (
    "/order/place", "/order/modify", "/order/cancel", "/order/multi", "/order/gtt", "/positions/exit"
)  # fmt: skip


def is_order_call(path: str, method: str) -> bool:
    return method != "GET" and any(marker in path for marker in _ORDER_CALL_MARKERS)


def create_app(sim: SimulatorPort) -> FastAPI:
    """The REST + control app bound to one running simulator."""
    app = FastAPI(title="Upstox simulator", docs_url="/sim/docs", openapi_url="/sim/openapi.json", redoc_url=None)
    app.state.sim = sim
    app.add_exception_handler(UpstoxError, _upstox_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BrokerGate, sim=sim)
    for router in (market_data.router, account.router, orders.router, gtt.router, control.router, login.router):
        app.include_router(router)
    return app


async def _upstox_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UpstoxError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    path = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    if request.url.path.startswith("/sim/"):
        return JSONResponse({"detail": exc.errors()}, status_code=422)
    return error_response(UpstoxError(400, errors.INVALID_INPUT, str(first.get("msg", "Invalid input")), path))


class BrokerGate:
    """What stands in front of every Upstox call: the GTT call count, `rest_down`, `ip_block`, the algo name.
    A plain ASGI middleware: `BaseHTTPMiddleware`'s task group and streamed body cost more per request than the
    calls it guards."""

    def __init__(self, app: ASGIApp, sim: SimulatorPort) -> None:
        self._app = app
        self._sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self._refusal(scope["path"], scope["method"], Headers(scope=scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, path: str, method: str, headers: Headers) -> Response | None:
        sim = self._sim
        if path.startswith("/v3/order/gtt"):
            sim.gtt.calls += 1  # every GTT call that reached the "broker", answered or refused
        if sim.faults.active("rest_down") and not path.startswith("/sim/"):
            return error_response(errors.rest_down())
        if is_order_call(path, method):
            if sim.faults.active("ip_block"):
                sim.blocked_order_calls += 1
                return error_response(errors.ip_blocked())
            required = sim.settings.sim_require_algo_name
            if required and headers.get("x-algo-name") != required:
                return error_response(errors.invalid_algo_name())
        return None
