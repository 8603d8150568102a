"""`/api/v1/auth`: replace the access token without a restart (by hand, or by Upstox's notifier webhook)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, HTTPException

from services.api.deps import ApiKeyDep, ResourcesDep
from services.api.schemas import ErrorOut, NotifierIn, TokenIn, TokenOut, ValidationErrorOut
from services.api.token_swap import Swapped, SwapRefused, swap_access_token

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not readable JSON"},
    422: {"model": ValidationErrorOut, "description": "bad body, or the broker refused the token (nothing changed)"},
    503: {"model": ErrorOut, "description": "the token could not be checked or stored (nothing changed)"},
}


@router.post(
    "/token", response_model=TokenOut, dependencies=[ApiKeyDep], responses={401: {"model": ErrorOut}, **_ERRORS}
)
async def set_access_token(body: TokenIn, res: ResourcesDep) -> TokenOut:
    """Make a new access token every service's: checked with a profile call first; never echoed back."""
    return _out(await _swap(res, body.access_token, source="api"))


@router.post("/notifier", response_model=TokenOut, responses={403: {"model": ErrorOut}, **_ERRORS})
async def access_token_notifier(body: NotifierIn, res: ResourcesDep) -> TokenOut:
    """Upstox's access-token request webhook. No API key (Upstox sends none): the client id must be ours and
    the token must pass a profile check as the user it names."""
    ours = res.settings.upstox_client_id
    if not ours or not hmac.compare_digest(body.client_id.encode(), ours.encode()):
        raise HTTPException(403, "client_id does not match UPSTOX_CLIENT_ID; token ignored")
    return _out(await _swap(res, body.access_token, source="notifier", expected_user_id=body.user_id))


async def _swap(res: ResourcesDep, token: str, *, source: str, expected_user_id: str | None = None) -> Swapped:
    try:
        return await swap_access_token(
            token,
            source=source,
            settings=res.settings,
            credentials=res.credentials,
            http=res.http,
            clock=res.clock,
            redis=res.redis,
            expected_user_id=expected_user_id,
        )
    except SwapRefused as exc:
        raise HTTPException(exc.status_code, str(exc)) from None


def _out(swapped: Swapped) -> TokenOut:
    return TokenOut(
        status="accepted",
        source=swapped.source,
        user_id=swapped.user_id,
        expires_at=swapped.expires_at,
        expiry_basis=swapped.expiry_basis,
        message="access token replaced; every service uses it from its next call",
    )
