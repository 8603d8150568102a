"""What the simulator's endpoints depend on: the narrow view of a running simulator they use (`SimulatorPort`,
implemented by services.sim.server.Simulator), and the Bearer-token checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from libs.common.clock import Clock
from services.sim import errors
from services.sim.faults import Faults
from services.sim.gtt import GttBook
from services.sim.market import Market
from services.sim.orders import OrderBook
from services.sim.settings import SimSettings
from services.sim.tokens import Scope, TokenRegistry


class SimulatorPort(Protocol):
    """What the REST and control endpoints reach: books, faults and tokens; not the listeners or the lifecycle."""

    clock: Clock
    market: Market
    orders: OrderBook
    gtt: GttBook
    faults: Faults
    tokens: TokenRegistry
    background: set[asyncio.Task[None]]
    blocked_order_calls: int

    @property
    def settings(self) -> SimSettings: ...

    def token_ok(self, token: str, scope: Scope = "account") -> bool: ...

    def authorized_uri(self, host: str) -> str: ...

    def instrument_file(self) -> bytes: ...

    @property
    def inject(self) -> Callable[..., Awaitable[None]]:
        """Simulator.inject: start a fault (kind, duration_s; its shape: code, ratio, delay_s, message, orders)."""

    def reset(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


# The dependencies are coroutines: FastAPI runs a plain `def` one in its thread pool, a thread hop per request.
async def get_sim(request: Request) -> SimulatorPort:
    sim: SimulatorPort = request.app.state.sim
    return sim


SimDep = Annotated[SimulatorPort, Depends(get_sim)]


async def bearer(request: Request, sim: SimDep) -> str:
    """The request's Bearer token when it is a live access token; else 401 UDAPI100050."""
    return _bearer(request, sim, "account")


async def market_bearer(request: Request, sim: SimDep) -> str:
    """The request's Bearer token when it may read market data (a live access or analytics token)."""
    return _bearer(request, sim, "market")


def _bearer(request: Request, sim: SimulatorPort, scope: Scope) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sim.token_ok(token.strip(), scope):
        raise errors.invalid_token()
    return token.strip()


TokenDep = Annotated[str, Depends(bearer)]
MarketTokenDep = Annotated[str, Depends(market_bearer)]
