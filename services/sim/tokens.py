"""Tokens with lifetimes, and the ways Upstox hands them out (the endpoints: services/sim/routes/login.py).

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

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from libs.common.clock import Clock
from libs.common.credentials import next_0330_ist

TokenKind = Literal["access", "analytics"]
Scope = Literal["account", "market"]
USER_ID = "SIM001"
ANALYTICS_LIFETIME_S = 365 * 86400
CODE_TTL_S = 600.0


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
