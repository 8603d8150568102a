"""Market data: feed authorization (and the redirect style of connecting), LTP quotes, the instrument file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from libs.common.money import rupees
from services.sim import errors
from services.sim.deps import MarketTokenDep, SimDep, SimulatorPort
from services.sim.errors import UpstoxError, success

INSTRUMENT_FILES = ("complete", "NSE")
LTP_MAX_KEYS = 500

router = APIRouter()


@router.get("/v3/feed/market-data-feed/authorize")
async def authorize(request: Request, sim: SimDep, _: MarketTokenDep) -> dict[str, Any]:
    if sim.faults.active("auth"):
        raise errors.invalid_token()
    uri = sim.authorized_uri(request.url.hostname or sim.settings.sim_host)
    return success({"authorized_redirect_uri": uri, "authorizedRedirectUri": uri})


@router.websocket("/v3/feed/market-data-feed")
async def feed_redirect(websocket: WebSocket) -> None:
    # Upstox answers the upgrade with a redirect to the feeder; the client must follow it.
    sim: SimulatorPort = websocket.app.state.sim
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sim.token_ok(token.strip(), "market") or sim.faults.active("auth"):
        await websocket.send_denial_response(
            JSONResponse(errors.error_body(errors.INVALID_TOKEN, "Invalid token used to access API"), 401)
        )
        return
    location = sim.authorized_uri(websocket.url.hostname or sim.settings.sim_host)
    await websocket.send_denial_response(Response(status_code=307, headers={"location": location}))


@router.get("/v2/market-quote/ltp")
async def ltp_v2(sim: SimDep, _: MarketTokenDep, instrument_key: Annotated[str, Query()]) -> dict[str, Any]:
    return _ltp(sim, instrument_key, v3=False)


@router.get("/v3/market-quote/ltp")
async def ltp_v3(sim: SimDep, _: MarketTokenDep, instrument_key: Annotated[str, Query()]) -> dict[str, Any]:
    return _ltp(sim, instrument_key, v3=True)


def _ltp(sim: SimulatorPort, instrument_key: str, v3: bool) -> dict[str, Any]:
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


@router.get("/market-quote/instruments/exchange/{name}.json.gz")
async def instrument_file(sim: SimDep, name: str) -> Response:
    if name not in INSTRUMENT_FILES:
        return Response(status_code=404)
    return Response(sim.instrument_file(), media_type="application/gzip")
