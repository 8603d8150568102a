"""Hot swap: make a new access token every service's, after the broker confirmed it works.

One path for every way a token arrives (`POST /api/v1/auth/token`, `token set` on stdin, the OAuth `login`,
the access-token request notifier): profile check -> encrypted store + notice (libs.common.credentials)
-> a `[SUCCESS]` line and a `token_ok` event (it ends a token alert). A refused token changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from loguru import logger
from redis.asyncio import Redis

from libs.common.clock import Clock, ist_iso
from libs.common.credentials import Credentials, CredentialsLocked
from libs.common.events import add_event, encode_event
from libs.common.settings import Settings
from services.api.token_probe import check_access_token


class SwapRefused(Exception):
    """The token was not taken; `status_code` is what the api answers (422 refused, 503 cannot check/store)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Swapped:
    """What a caller may show about the token now in force (never the token)."""

    source: str
    user_id: str
    expires_at: str | None  # ISO 8601 IST; None: never (the simulator's fixed token)
    expiry_basis: str


async def swap_access_token(
    token: str,
    *,
    source: str,
    settings: Settings,
    credentials: Credentials,
    http: httpx.AsyncClient,
    clock: Clock,
    redis: Redis,
    expected_user_id: str | None = None,
) -> Swapped:
    """Check `token` with the broker's profile endpoint, then make it the access token of every service.

    `expected_user_id` (the notifier's claim) must match the profile's user. Raises SwapRefused.
    """
    verdict = await check_access_token(http, settings.api_base, token, clock.now())
    if verdict.valid is None:
        raise SwapRefused(f"cannot check the token: {verdict.detail}", 503)
    if not verdict.valid:
        raise SwapRefused(f"the broker refused the token: {verdict.detail}", 422)
    if expected_user_id is not None and verdict.user_id != expected_user_id:
        raise SwapRefused("the token belongs to another user than the one named", 422)
    try:
        held = await credentials.store_access(token, source=source, user_id=verdict.user_id)
    except CredentialsLocked as exc:
        raise SwapRefused(f"cannot store the token: {exc}", 503) from None
    expiry = credentials.expiry(held)
    until = ist_iso(expiry.at) if expiry.at is not None else None
    logger.success(
        f"Access token replaced (via {source}, user {verdict.user_id or 'unknown'}, "
        f"valid until {until or 'revoked'}); every service uses it from its next call"
    )
    await add_event(redis, encode_event("token_ok", clock.now(), token="access", source=source, expires_at=until))  # noqa: S106
    return Swapped(source, verdict.user_id, until, expiry.basis)
