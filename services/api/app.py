"""`create_app()`: the FastAPI application, its lifespan (Redis, broker, token probe, the supervised loops), errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from loguru import logger
from redis.exceptions import RedisError
from starlette.middleware.trustedhost import TrustedHostMiddleware

from libs.common.broker import Broker, create_broker
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import Clock, SystemClock
from libs.common.closing import Closer
from libs.common.credentials import Credentials
from libs.common.instruments import guard_instruments
from libs.common.models import MalformedRecord
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache
from libs.common.redis_client import create_redis
from libs.common.replication import ClaimConfirmation
from libs.common.safety_net import create_safety_net
from libs.common.service import cancel_and_wait, supervise
from libs.common.settings import Settings
from services.api.deps import Resources
from services.api.health import HealthReader
from services.api.idempotency import Idempotency
from services.api.routes import alerts, auth, dashboard, metrics, monitoring, positions
from services.api.security import BodyLimit, allowed_hosts, check_bind, require_read_access
from services.api.token_probe import TokenProbe
from services.api.token_watch import ExpiryWatch

DESCRIPTION = """Connection health, emergency close, status and positions of the Upstox resilience guard.

When `API_KEY` is set (it must be when the api is bound beyond loopback) every endpoint requires
`Authorization: Bearer <API_KEY>` or `X-API-Key`, reads too unless `API_PUBLIC_READS=true`.
Requests must name an allowed `Host` (loopback names, `API_ALLOWED_HOSTS`)."""


def create_app(
    settings: Settings,
    *,
    broker: Broker | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
) -> FastAPI:
    """The api application. `broker`, `clock` and `http` (the token probe's client) may be injected by tests.

    Raises ConfigError when bound beyond loopback without an API key.
    """
    check_bind(settings)
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = create_redis(settings)
        credentials = Credentials(settings, redis, clock)
        used_broker = broker or create_broker(settings, credentials, clock)
        probe_http = http or httpx.AsyncClient(timeout=settings.broker_timeout_s, verify=settings.tls_ca_file or True)
        store = PositionStore(redis, clock)
        holdings = BrokerPositions(redis, used_broker, clock, max_age_s=settings.broker_positions_max_age_s)
        gate = OrderGate(redis, clock)
        cache = PriceCache(redis, settings.price_cache_ttl_s)
        net = create_safety_net(settings, redis, used_broker, clock)
        app.state.resources = Resources(
            settings=settings,
            clock=clock,
            redis=redis,
            store=store,
            cache=cache,
            broker=used_broker,
            closer=Closer(
                store,
                used_broker,
                clock,
                holdings=holdings,
                gate=gate,
                settings=settings,
                safety_net=net,
                confirmation=ClaimConfirmation(redis, settings),
            ),
            holdings=holdings,
            gate=gate,
            idempotency=Idempotency(redis, settings.idempotency_ttl_s),
            token_probe=TokenProbe(settings, clock, probe_http, credentials),
            credentials=credentials,
            http=probe_http,
            health=HealthReader(redis, settings, clock),
            instruments=guard_instruments(settings, clock),
            safety_net=net,
        )
        watch = ExpiryWatch(settings, credentials, app.state.resources.token_probe, redis, clock)
        loops = supervise("api", {"token-expiry": watch.run}, redis=redis, settings=settings, clock=clock)
        running = asyncio.create_task(loops, name="api")
        try:
            yield
        finally:
            await cancel_and_wait([running], grace_s=0.2)  # its loops have nothing to tidy: no need to wait long
            await used_broker.aclose()
            await probe_http.aclose()
            await redis.aclose()

    app = FastAPI(
        title="Upstox resilience guard api",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        dependencies=[Depends(require_read_access)],
        strict_content_type=True,  # the default since FastAPI 0.132 (the floor in pyproject.toml): said on purpose
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    # Outermost: a foreign Host is refused before anything else runs.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings), www_redirect=False)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(MalformedRecord, _malformed)
    app.include_router(monitoring.router)
    app.include_router(positions.router)
    app.include_router(alerts.router)
    app.include_router(auth.router)
    # A plain route, outside the app-wide read check: like the feed's and the monitor's exporters it is readable
    # without the key (Prometheus scrapes it; it holds counts, no positions or secrets).
    app.add_route("/metrics", metrics.metrics, include_in_schema=False)
    app.include_router(dashboard.router)
    app.add_route("/", dashboard.page, include_in_schema=False)
    app.mount("/dashboard", StaticFiles(directory=dashboard.STATIC_DIR), name="dashboard")
    return app


def _readable(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        out.append({"type": err.get("type", "value_error"), "loc": loc, "msg": str(err.get("msg", ""))})
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _readable(exc.errors())
    message = "; ".join(f"{'.'.join(e['loc'][1:])}: {e['msg']}" if e["loc"][1:] else e["msg"] for e in errors)
    return JSONResponse({"detail": errors, "message": message or "invalid request"}, status_code=422)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(f"Redis unreachable while serving {request.url.path}: {type(exc).__name__}")
    return JSONResponse({"detail": f"Redis unreachable ({type(exc).__name__}); retry shortly"}, status_code=503)


async def _malformed(request: Request, exc: Exception) -> JSONResponse:
    logger.error(f"Corrupt record while serving {request.url.path}: {exc}")
    return JSONResponse({"detail": f"corrupt record in Redis: {exc}"}, status_code=500)
