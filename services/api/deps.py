"""What the endpoints depend on: one `Resources` per app, opened and closed by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from redis.asyncio import Redis

from libs.common.broker import Broker
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import Clock
from libs.common.closing import Closer
from libs.common.credentials import Credentials
from libs.common.instruments import InstrumentIndex
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache
from libs.common.safety_net import SafetyNet
from libs.common.settings import Settings
from services.api.health import HealthReader
from services.api.idempotency import Idempotency
from services.api.security import require_api_key
from services.api.token_probe import TokenProbe


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    clock: Clock
    redis: Redis
    store: PositionStore
    cache: PriceCache
    broker: Broker
    closer: Closer
    idempotency: Idempotency
    token_probe: TokenProbe
    credentials: Credentials
    http: httpx.AsyncClient  # to Upstox (token checks), not to the broker's order host
    health: HealthReader
    instruments: InstrumentIndex
    holdings: BrokerPositions
    gate: OrderGate
    safety_net: SafetyNet | None = None


async def get_resources(request: Request) -> Resources:
    # async on purpose, like every dependency here: FastAPI runs a plain `def` dependency in its thread pool,
    # a thread hop (and a GIL handoff) per request for a dict lookup.
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
ApiKeyDep = Depends(require_api_key)
