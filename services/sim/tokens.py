"""Tokens with lifetimes, and the ways Upstox hands them out.

- `POST /sim/tokens {"kind": "access"|"analytics", "expires_in_s"?}` issues one (control API).
- An access token dies at the first 03:30 IST after its issue on the simulator's clock (or after
  `expires_in_s`), then gets 401 `UDAPI100050` everywhere. An analytics token lives a year and is refused
  (401) on everything but market data (feed authorize + WebSocket, LTP).
- OAuth: `GET /v2/login/authorization/dialog` (the simulated user approves at once: 302 to the redirect URI
  with a single-use `code`) and `POST /v2/login/authorization/token` (form; the unwrapped profile + token).
- `DELETE /v2/logout` revokes the token it is sent with.
- Token request: `POST /v3/login/auth/token/request/{client_id}` `{"client_secret"}`; the simulated user
  approves at once and the simulator POSTs the token to the notifier URL (`SIM_NOTIFIER_URL`, default the
  local api's `/api/v1/auth/notifier`).

The registered app is `UPSTOX_CLIENT_ID` / `UPSTOX_CLIENT_SECRET` / `UPSTOX_REDIRECT_URI` (the same `.env`).
Tokens are JWT-shaped with `exp` and `iat` claims, like Upstox's, so the guard reads their expiry the same
way. `SIM_ACCESS_TOKEN` stays valid forever (the simulator's fixed token).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from loguru import logger
from pydantic import BaseModel, Field

from libs.common.clock import Clock, ist_iso
from libs.common.credentials import next_0330_ist
from services.sim import errors
from services.sim.errors import UpstoxError, success

if TYPE_CHECKING:
    from services.sim.server import Simulator

TokenKind = Literal["access", "analytics"]
Scope = Literal["account", "market"]
USER_ID = "SIM001"
ANALYTICS_LIFETIME_S = 365 * 86400
CODE_TTL_S = 600.0
INVALID_AUTH_CODE = "UDAPI100057"


@dataclass(frozen=True, slots=True)
class Issued:
    kind: TokenKind
    issued_at: float  # epoch s on the simulator's clock
    expires_at: float


class TokenRegistry:
    """Every token the simulator issued, and whether one may be used for a call now."""

    def __init__(self, clock: Clock, fixed_token: str) -> None:
        self._clock = clock
        self._fixed = fixed_token
        self._secret = secrets.token_bytes(32)
        self._issued: dict[str, Issued] = {}
        self._revoked: set[str] = set()
        self._codes: dict[str, float] = {}  # OAuth code -> monotonic time issued (single use)

    def issue(self, kind: TokenKind, expires_in_s: float | None = None) -> tuple[str, Issued]:
        """A new token of `kind`; an access token ends at the next 03:30 IST or after `expires_in_s`."""
        now = self._clock.now()
        end = next_0330_ist(now) if kind == "access" else now + ANALYTICS_LIFETIME_S
        if expires_in_s is not None:
            end = min(end, now + expires_in_s)
        issued = Issued(kind, now, end)
        token = self._jwt({"sub": USER_ID, "kind": kind, "iat": int(now), "exp": end, "jti": secrets.token_hex(8)})
        self._issued[token] = issued
        return token, issued

    def check(self, token: str, scope: Scope) -> bool:
        """May `token` be used for a call of `scope` now? (The fixed token may until it is logged out.)"""
        if token in self._revoked:
            return False
        if hmac.compare_digest(token.encode(), self._fixed.encode()):
            return True
        issued = self._issued.get(token)
        if issued is None or self._clock.now() >= issued.expires_at:
            return False
        return issued.kind == "access" or scope == "market"

    def revoke(self, token: str) -> None:
        """`DELETE /v2/logout`: the token is dead from now on."""
        self._revoked.add(token)

    def new_code(self) -> str:
        now = time.monotonic()
        self._codes = {c: t for c, t in self._codes.items() if now - t < CODE_TTL_S}
        code = secrets.token_urlsafe(12)
        self._codes[code] = now
        return code

    def use_code(self, code: str) -> bool:
        issued = self._codes.pop(code, None)
        return issued is not None and time.monotonic() - issued < CODE_TTL_S

    def _jwt(self, claims: dict[str, Any]) -> str:
        def part(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = part(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{part(signature)}"


class TokenControl(BaseModel):
    kind: TokenKind
    expires_in_s: float | None = Field(None, gt=0)


class TokenRequestBody(BaseModel):
    client_secret: str = Field(max_length=200)


def add_token_routes(app: FastAPI, sim: Simulator) -> None:
    """The control endpoint that issues tokens, and Upstox's login endpoints."""
    tokens = sim.tokens
    settings = sim.settings

    def app_registered(client_id: str, client_secret: str | None = None, redirect_uri: str | None = None) -> None:
        ours = settings.upstox_client_id
        if not ours or not hmac.compare_digest(client_id.encode(), ours.encode()):
            raise UpstoxError(401, errors.INVALID_TOKEN, "Invalid client_id")
        secret = settings.upstox_client_secret.get_secret_value()
        if client_secret is not None and not hmac.compare_digest(client_secret.encode(), secret.encode()):
            raise UpstoxError(401, errors.INVALID_TOKEN, "Invalid client_secret")
        if redirect_uri is not None and redirect_uri != settings.upstox_redirect_uri:
            raise UpstoxError(400, errors.INVALID_INPUT, "redirect_uri does not match the app's", "redirect_uri")

    @app.post("/sim/tokens")
    async def issue(body: TokenControl) -> dict[str, Any]:
        token, issued = tokens.issue(body.kind, body.expires_in_s)
        logger.info(f"sim control: issued an {body.kind} token valid until {ist_iso(issued.expires_at)}")
        return {"kind": body.kind, "access_token": token, "expires_at": ist_iso(issued.expires_at), "user_id": USER_ID}

    @app.get("/v2/login/authorization/dialog")
    async def dialog(request: Request) -> RedirectResponse:
        q = request.query_params
        if q.get("response_type") != "code":
            raise UpstoxError(400, errors.INVALID_INPUT, "response_type must be code", "response_type")
        app_registered(q.get("client_id", ""), redirect_uri=q.get("redirect_uri", ""))
        # the simulated user logs in and approves at once
        query = {"code": tokens.new_code(), **({"state": q["state"]} if "state" in q else {})}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(query)}", status_code=302)

    @app.post("/v2/login/authorization/token")
    async def exchange(request: Request) -> dict[str, Any]:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        if form.get("grant_type") != "authorization_code":
            raise UpstoxError(400, errors.INVALID_INPUT, "grant_type must be authorization_code", "grant_type")
        app_registered(form.get("client_id", ""), form.get("client_secret", ""), form.get("redirect_uri", ""))
        if not tokens.use_code(form.get("code", "")):
            raise UpstoxError(401, INVALID_AUTH_CODE, "Invalid Auth code")
        token, _ = tokens.issue("access")
        return {**profile_data(), "access_token": token, "extended_token": None}

    @app.delete("/v2/logout")
    async def logout(request: Request) -> dict[str, Any]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not tokens.check(token.strip(), "account"):
            raise errors.invalid_token()
        tokens.revoke(token.strip())
        return success(True)

    @app.post("/v3/login/auth/token/request/{client_id}")
    async def token_request(client_id: str, body: TokenRequestBody) -> dict[str, Any]:
        app_registered(client_id, body.client_secret)
        notifier = settings.sim_notifier_url or f"http://127.0.0.1:{settings.api_port}/api/v1/auth/notifier"
        expiry = next_0330_ist(sim.clock.now())
        task = asyncio.create_task(_approve_and_notify(sim, client_id, notifier), name="sim-token-notifier")
        sim.background.add(task)
        task.add_done_callback(sim.background.discard)
        return success({"authorization_expiry": str(int(expiry * 1000)), "notifier_url": notifier})


async def _approve_and_notify(sim: Simulator, client_id: str, url: str) -> None:
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


def profile_data() -> dict[str, Any]:
    return {
        "email": "sim@example.invalid",
        "exchanges": ["NSE", "BSE", "NFO"],
        "products": ["D", "I", "CO", "MTF"],
        "broker": "UPSTOX",
        "user_id": USER_ID,
        "user_name": "Simulated User",
        "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
        "user_type": "individual",
        "poa": False,
        "ddpi": False,
        "is_active": True,
    }
