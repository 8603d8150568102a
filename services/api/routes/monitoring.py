"""`/api/v1/monitoring`: connection health, the emergency close and service status."""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from loguru import logger
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.broker import BrokerError, BrokerOutcomeUnknown
from libs.common.clock import ist_iso
from libs.common.expiry import expiring_symbols, expiring_today
from libs.common.feed_lease import read_leadership
from libs.common.freshness import FreshnessPolicy
from libs.common.heartbeat import heartbeat_age_s, live_instances
from libs.common.models import FeedStatus, MalformedRecord, Position
from libs.common.positions import PositionConflict, PositionNotFound
from services.api.deps import ApiKeyDep, ResourcesDep
from services.api.emergency import emergency_close
from services.api.idempotency import KeyInProgress, KeyReused, Stored
from services.api.schemas import (
    SYMBOL_PATTERN,
    BrokerPositionsStatus,
    ConnectionHealth,
    CredentialStatus,
    EmergencyClosePending,
    EmergencyCloseRequest,
    EmergencyCloseResponse,
    ErrorOut,
    ExpiringContract,
    ExpiringPosition,
    FeedDetail,
    FeedLeadershipInfo,
    OrdersStatus,
    RedisStatus,
    SafetyNetKeeperInfo,
    SafetyNetStatus,
    ServiceStatus,
    Status,
    TokenStatus,
    ValidationErrorOut,
    unprocessable,
)
from services.api.token_watch import credential_views

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"])

_SYMBOL = re.compile(SYMBOL_PATTERN)
_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorOut, "description": "bad body or parameter"},
    503: {"model": ErrorOut, "description": "Redis (or the broker) unreachable"},
}


def _symbols(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    bad = [s for s in wanted if len(s) > 40 or not _SYMBOL.match(s)]
    if bad:
        raise unprocessable(f"not a trading symbol: {bad[0][:50]!r}", "query", "symbols")
    return wanted


@router.get("/connection-health", response_model=ConnectionHealth, responses=_ERRORS)
async def connection_health(
    res: ResourcesDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="most cache entries to list (open positions always)")] = 50,
    symbols: Annotated[
        str | None, Query(max_length=4000, description="comma-separated symbols to list instead of a sample")
    ] = None,
) -> Response:
    """The guide's connection health, plus feed liveness, open-position price counts and the advice that applies,
    and the open F&O positions expiring today."""
    health = await res.health.read(limit, _symbols(symbols))
    held = [s for s, entry in health["price_cache"]["cache_entries"].items() if entry["has_open_position"]]
    expiring = expiring_symbols(held, res.instruments, res.clock.now())  # no extra Redis round trip
    health["expiring_today"] = [ExpiringContract.model_validate(e).model_dump(mode="json") for e in expiring]
    # Serialised with orjson, not validated again through the model: the body is built in the schema's shape
    # (tests/api/test_health_body.py holds it to the model), and this is the api's most frequent request.
    return Response(orjson.dumps(health), media_type="application/json")


async def _expiring_today(res: ResourcesDep) -> list[ExpiringPosition]:
    now = res.clock.now()
    positions = [p for p in await res.store.list_open() if isinstance(p, Position)]
    return [ExpiringPosition.model_validate(e.as_dict(now)) for e in expiring_today(positions, res.instruments, now)]


@router.post(
    "/emergency-close-position",
    response_model=EmergencyCloseResponse,
    dependencies=[ApiKeyDep],
    responses={
        400: {"model": ErrorOut, "description": "the body is not readable JSON"},
        401: {"model": ErrorOut, "description": "API key required"},
        404: {"model": ErrorOut, "description": "no open position for the symbol"},
        202: {"model": EmergencyClosePending, "description": "order sent, outcome unknown: being reconciled"},
        409: {"model": ErrorOut, "description": "already closing or closed (or the same Idempotency-Key is running)"},
        413: {"model": ErrorOut, "description": "body too large"},
        502: {"model": ErrorOut, "description": "the broker rejected the order; the position stays open"},
        **_ERRORS,
    },
)
async def emergency_close_position(
    body: EmergencyCloseRequest,
    res: ResourcesDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
    ] = None,
) -> EmergencyCloseResponse | JSONResponse:
    """Close a position now through the same atomic claim and broker path as the monitor."""
    fingerprint = f"{body.symbol}|{body.reason.value}"
    if idempotency_key is not None:
        try:
            stored = await res.idempotency.begin(idempotency_key, fingerprint)
        except KeyInProgress:
            raise HTTPException(409, "a request with this Idempotency-Key is still in progress; retry") from None
        except KeyReused:
            raise unprocessable(
                "this Idempotency-Key was used for a different request", "header", "Idempotency-Key"
            ) from None
        if stored is not None:
            return JSONResponse(stored.body, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"})
    try:
        result = await _close(res, body)
    except Exception:
        if idempotency_key is not None:
            await res.idempotency.abandon(idempotency_key)
        raise
    status_code = 202 if isinstance(result, EmergencyClosePending) else 200
    if idempotency_key is not None:
        await res.idempotency.finish(idempotency_key, fingerprint, Stored(status_code, result.model_dump(mode="json")))
    if isinstance(result, EmergencyClosePending):
        return JSONResponse(result.model_dump(mode="json"), status_code=202)
    return result


async def _close(res: ResourcesDep, body: EmergencyCloseRequest) -> EmergencyCloseResponse | EmergencyClosePending:
    try:
        return await emergency_close(res, body.symbol, body.reason)
    except BrokerOutcomeUnknown as exc:
        logger.warning(f"Emergency close of {body.symbol}: outcome unknown ({exc}); being reconciled by its order tag")
        return EmergencyClosePending(
            status="pending",
            symbol=body.symbol,
            claim_id=exc.claim_id,
            message=(
                f"Close order for {body.symbol} sent but its outcome is unknown ({exc}); the position is closing and "
                f"being reconciled with the broker by its order tag: see GET /api/v1/positions/{body.symbol}"
            ),
        )
    except PositionNotFound:
        raise HTTPException(404, f"no open position for {body.symbol}") from None
    except PositionConflict as exc:
        raise HTTPException(409, f"position {body.symbol} is already {exc.state}") from None
    except BrokerError as exc:
        logger.warning(f"Emergency close of {body.symbol} failed, position stays open: {exc}")
        detail = f"broker did not close {body.symbol}: {exc}; position stays open"
        raise HTTPException(exc.status_code, detail) from None


@router.get("/status", response_model=Status, responses={422: _ERRORS[422]})
async def service_status(res: ResourcesDep) -> Status:
    """Whether the access token works, Redis reachability, each service's heartbeat and the market in use."""
    now = res.clock.now()
    verdict = await res.token_probe.verdict()
    token = TokenStatus(valid=verdict.valid, checked_at=ist_iso(verdict.checked_at), detail=verdict.detail)
    warn_s = res.settings.token_expiry_warn_s
    views = await credential_views(res.credentials, res.token_probe, verdict, now, warn_s)
    credentials = [
        CredentialStatus(
            kind=v.kind,
            state=v.state,
            expires_at=None if v.expires_at is None else ist_iso(v.expires_at),
            expiry_basis=v.expiry_basis,
            source=v.source,
            used_for=v.used_for,
            detail=v.detail,
        )
        for v in views
    ]
    access = views[0]
    started = time.perf_counter()
    try:
        await res.redis.ping()
        redis = RedisStatus(reachable=True, latency_ms=round((time.perf_counter() - started) * 1000, 3))
    except RedisError as exc:
        redis = RedisStatus(reachable=False, latency_ms=None, error=type(exc).__name__)
    services: dict[str, ServiceStatus] = {}
    instances: dict[str, dict[str, float]] = {}
    feed: FeedDetail | None = None
    notes: dict[str, str] = {}
    events: list[dict[str, Any]] = []
    safety_net: SafetyNetStatus | None = None
    orders: OrdersStatus | None = None
    broker_positions: BrokerPositionsStatus | None = None
    expiring: list[ExpiringPosition] = []
    if redis.reachable:
        ages: dict[str, float | None] = {}
        for name in keys.SERVICES:
            age = ages[name] = await heartbeat_age_s(res.redis, name, res.clock)
            alive = age is not None and age < res.settings.heartbeat_ttl_s
            services[name] = ServiceStatus(alive=alive, heartbeat_age_s=None if age is None else round(age, 3))
            instances[name] = await live_instances(res.redis, name, res.settings, res.clock)
        try:
            status = FeedStatus.from_redis(cast(dict[str, str], await res.redis.hgetall(keys.FEED_STATUS)))
            feed = FeedDetail(
                state=status.state.value,
                connected=FreshnessPolicy.from_settings(res.settings).feed(status, ages["feed"]).live,
                token_ok=status.token_ok,
                last_error=status.last_error,
                dns_resolver=status.dns_resolver,
                leadership=FeedLeadershipInfo(**(await read_leadership(res.redis, res.settings, res.clock)).public()),
            )
        except MalformedRecord as exc:
            feed = FeedDetail(state="unknown", connected=False, token_ok=None, last_error=str(exc), dns_resolver="")
        notes = cast(dict[str, str], await res.redis.hgetall(keys.SERVICES_STATUS))
        events = await res.store.recent_events(10)
        orders, broker_positions = await _orders_status(res), await _broker_positions_status(res)
        expiring = await _expiring_today(res)
        safety_net = await _safety_net_status(res)
    if access.state in ("expired", "rejected") and (orders is None or not orders.blocked):
        # a dead access token blocks every order just as a refused IP does
        orders = OrdersStatus(blocked=True, reason=f"access token {access.state}: {access.detail}")
    return Status(
        timestamp=ist_iso(now),
        market="simulator" if res.settings.simulator_mode else "upstox",
        api_base=res.settings.api_base,
        token=token,
        credentials=credentials,
        orders=orders,
        redis=redis,
        services=services,
        instances=instances,
        feed=feed,
        notes=notes,
        recent_events=events,
        broker_positions=broker_positions,
        expiring_today=expiring,
        safety_net=safety_net,
    )


async def _safety_net_status(res: ResourcesDep) -> SafetyNetStatus:
    settings = res.settings
    if res.safety_net is None:
        return SafetyNetStatus(enabled=False, buffer_pct=settings.safety_net_buffer_pct, states={}, failing=[])
    positions = [p for p in await res.store.list_open() if isinstance(p, Position)]
    nets = await res.safety_net.states([p.symbol for p in positions])
    states: dict[str, int] = {}
    failing = []
    for symbol, net in nets.items():
        shown = net.public()
        states[shown["state"]] = states.get(shown["state"], 0) + 1
        if net.last_error and shown["state"] not in ("active", "none"):
            failing.append({"symbol": symbol, **shown, "attempts": net.attempts})
    held = await read_leadership(res.redis, settings, res.clock, key=keys.SAFETY_NET_LEASE, service="monitor")
    keeper = SafetyNetKeeperInfo(
        keeper=held.leader, fencing_token=held.token, keeper_since=held.leader_since, lease_age_s=held.lease_age_s,
        lease_expires_in_s=held.lease_expires_in_s, standbys=held.standbys,
    )  # fmt: skip
    return SafetyNetStatus(
        enabled=True, buffer_pct=settings.safety_net_buffer_pct, keeper=keeper, states=states, failing=failing
    )


async def _orders_status(res: ResourcesDep) -> OrdersStatus:
    blocked = await res.gate.state()
    since = blocked.get("since")
    static_ips = None
    if not res.settings.simulator_mode and res.settings.broker == "upstox":
        try:
            static_ips = await res.broker.static_ips()
        except BrokerError as exc:
            static_ips = {"error": str(exc)}
    return OrdersStatus(
        blocked=bool(blocked),
        reason=blocked.get("reason"),
        since=ist_iso(float(since)) if since else None,
        static_ips=static_ips,
    )


async def _broker_positions_status(res: ResourcesDep) -> BrokerPositionsStatus | None:
    raw = await res.redis.get(keys.BROKER_UNGUARDED)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return BrokerPositionsStatus(as_of=ist_iso(float(data["as_of"])), unguarded=list(data["positions"]))
    except (ValueError, KeyError, TypeError):
        return BrokerPositionsStatus(as_of=None, unguarded=[])
