"""Tokens: the control endpoint that issues them (`POST /sim/tokens`) and Upstox's login endpoints (OAuth dialog
and code exchange, logout, the token request approved at once and POSTed to the notifier)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from loguru import logger
from pydantic import BaseModel, Field

from libs.common.clock import ist_iso
from libs.common.credentials import next_0330_ist
from libs.common.settings import Settings
from services.sim import errors
from services.sim.deps import SimDep, SimulatorPort
from services.sim.errors import UpstoxError, success
from services.sim.tokens import USER_ID, TokenKind, profile_data

INVALID_AUTH_CODE = "UDAPI100057"

router = APIRouter()


class TokenControl(BaseModel):
    kind: TokenKind
    expires_in_s: float | None = Field(None, gt=0)


class TokenRequestBody(BaseModel):
    client_secret: str = Field(max_length=200)


def _app_registered(
    settings: Settings, client_id: str, client_secret: str | None = None, redirect_uri: str | None = None
) -> None:
    ours = settings.upstox_client_id
    if not ours or not hmac.compare_digest(client_id.encode(), ours.encode()):
        raise UpstoxError(401, errors.INVALID_TOKEN, "Invalid client_id")
    secret = settings.upstox_client_secret.get_secret_value()
    if client_secret is not None and not hmac.compare_digest(client_secret.encode(), secret.encode()):
        raise UpstoxError(401, errors.INVALID_TOKEN, "Invalid client_secret")
    if redirect_uri is not None and redirect_uri != settings.upstox_redirect_uri:
        raise UpstoxError(400, errors.INVALID_INPUT, "redirect_uri does not match the app's", "redirect_uri")


@router.post("/sim/tokens")
async def issue(sim: SimDep, body: TokenControl) -> dict[str, Any]:
    token, issued = sim.tokens.issue(body.kind, body.expires_in_s)
    logger.info(f"sim control: issued an {body.kind} token valid until {ist_iso(issued.expires_at)}")
    return {"kind": body.kind, "access_token": token, "expires_at": ist_iso(issued.expires_at), "user_id": USER_ID}


@router.get("/v2/login/authorization/dialog")
async def dialog(request: Request, sim: SimDep) -> RedirectResponse:
    q = request.query_params
    if q.get("response_type") != "code":
        raise UpstoxError(400, errors.INVALID_INPUT, "response_type must be code", "response_type")
    _app_registered(sim.settings, q.get("client_id", ""), redirect_uri=q.get("redirect_uri", ""))
    # the simulated user logs in and approves at once
    query = {"code": sim.tokens.new_code(), **({"state": q["state"]} if "state" in q else {})}
    return RedirectResponse(f"{q['redirect_uri']}?{urlencode(query)}", status_code=302)


@router.post("/v2/login/authorization/token")
async def exchange(request: Request, sim: SimDep) -> dict[str, Any]:
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    if form.get("grant_type") != "authorization_code":
        raise UpstoxError(400, errors.INVALID_INPUT, "grant_type must be authorization_code", "grant_type")
    _app_registered(
        sim.settings, form.get("client_id", ""), form.get("client_secret", ""), form.get("redirect_uri", "")
    )
    if not sim.tokens.use_code(form.get("code", "")):
        raise UpstoxError(401, INVALID_AUTH_CODE, "Invalid Auth code")
    token, _ = sim.tokens.issue("access")
    return {**profile_data(), "access_token": token, "extended_token": None}


@router.delete("/v2/logout")
async def logout(request: Request, sim: SimDep) -> dict[str, Any]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sim.tokens.check(token.strip(), "account"):
        raise errors.invalid_token()
    sim.tokens.revoke(token.strip())
    return success(True)


@router.post("/v3/login/auth/token/request/{client_id}")
async def token_request(sim: SimDep, client_id: str, body: TokenRequestBody) -> dict[str, Any]:
    settings = sim.settings
    _app_registered(settings, client_id, body.client_secret)
    notifier = settings.sim_notifier_url or f"http://127.0.0.1:{settings.api_port}/api/v1/auth/notifier"
    expiry = next_0330_ist(sim.clock.now())
    task = asyncio.create_task(_approve_and_notify(sim, client_id, notifier), name="sim-token-notifier")
    sim.background.add(task)
    task.add_done_callback(sim.background.discard)
    return success({"authorization_expiry": str(int(expiry * 1000)), "notifier_url": notifier})


async def _approve_and_notify(sim: SimulatorPort, client_id: str, url: str) -> None:
    """The simulated user approves the request at once; the token goes to the app's notifier webhook."""
    token, issued = sim.tokens.issue("access")
    body = {
        "client_id": client_id,
        "user_id": USER_ID,
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": str(int(issued.expires_at * 1000)),
        "issued_at": str(int(issued.issued_at * 1000)),
        "message_type": "access_token",
    }
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(url, json=body)
        logger.info(f"sim token request approved; the notifier answered {resp.status_code}")
    except httpx.HTTPError as exc:
        logger.warning(f"sim token request approved, but the notifier could not be reached: {type(exc).__name__}")
