"""Expiry awareness: each credential's state for `/status`, and warnings before and at expiry.

States: `valid`; `expiring` within `TOKEN_EXPIRY_WARN_S` of its expiry; `expired` once that passed;
`rejected` when the broker refuses it before then. The expiry comes from the token's own `exp` claim, else
the 03:30 IST rule (libs.common.credentials). `ExpiryWatch` runs in the api: one `[WARNING]` line and one
event (`token_expiring`, `token_expired`, `token_rejected`, then `token_ok`; field `token`: access or
analytics) per token and state, which the alerts service turns into messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.clock import Clock, ist_iso
from libs.common.credentials import Credentials, CredentialState, Expiry, state_of
from libs.common.events import add_event, encode_event
from libs.common.settings import Settings
from services.api.token_probe import TokenProbe, TokenVerdict

ACCESS_USE = "orders, GTTs, positions, profile"
MARKET_USE = "market-data feed, LTP"
_PROBE_EVERY_S = 60.0  # how often the watch asks the broker itself (the status endpoint asks on demand)
_RENEW = "python -m services.api login, python -m services.api token set, or POST /api/v1/auth/token"


@dataclass(frozen=True, slots=True)
class CredentialView:
    kind: Literal["access", "analytics"]
    state: CredentialState
    expires_at: float | None
    expiry_basis: str
    source: str
    used_for: str
    detail: str


async def credential_views(
    credentials: Credentials, probe: TokenProbe, access_verdict: TokenVerdict, now: float, warn_s: float
) -> list[CredentialView]:
    """The access token's view (given its probe verdict), then the analytics token's when one is configured."""
    held = await credentials.held_access()
    expiry = credentials.expiry(held)
    use = ACCESS_USE if credentials.has_analytics else f"{ACCESS_USE}, {MARKET_USE}"
    views = [
        CredentialView(
            "access",
            state_of(expiry, now, warn_s, rejected=access_verdict.valid is False),
            expiry.at,
            expiry.basis,
            held.source,
            use,
            access_verdict.detail,
        )
    ]
    analytics_verdict = await probe.analytics_verdict()
    if analytics_verdict is not None:
        a_expiry = credentials.analytics_expiry()
        views.append(
            CredentialView(
                "analytics",
                state_of(a_expiry, now, warn_s, rejected=analytics_verdict.valid is False),
                a_expiry.at,
                a_expiry.basis,
                "env",
                MARKET_USE,
                analytics_verdict.detail,
            )
        )
    return views


class ExpiryWatch:
    """Announces, once per token, that it is about to expire, that it has expired, and that the broker
    refuses it (or accepts it again): a `[WARNING]` line and an event for the alerts service each."""

    def __init__(
        self, settings: Settings, credentials: Credentials, probe: TokenProbe, redis: Redis, clock: Clock
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._probe = probe
        self._redis = redis
        self._clock = clock
        self._announced: dict[tuple[str, str], str] = {}  # (kind, token) -> last expiry state announced
        self._refused: dict[tuple[str, str], bool] = {}  # (kind, token) -> the broker refused it at last probe

    async def run(self, interval_s: float = 1.0) -> None:
        probe_every_s = max(_PROBE_EVERY_S, self._settings.token_probe_cache_s)
        next_probe = self._clock.monotonic() + probe_every_s
        while True:
            due = self._clock.monotonic() >= next_probe
            try:
                await self.check_once(probe=due)
            except RedisError as exc:
                logger.warning(f"Token expiry check: Redis unavailable ({type(exc).__name__}); retrying")
            if due:
                next_probe = self._clock.monotonic() + probe_every_s
            await self._clock.sleep(interval_s)

    async def check_once(self, *, probe: bool = True) -> None:
        """Look at each credential once; with `probe`, also ask the broker whether it accepts them."""
        held = await self._credentials.held_access()
        expired = await self._announce("access", held.token, self._credentials.expiry(held))
        if probe:
            await self._judge("access", held.token, await self._probe.verdict(), expired)
        if self._credentials.has_analytics:
            token = self._credentials.analytics_token
            expired = await self._announce("analytics", token, self._credentials.analytics_expiry())
            verdict = await self._probe.analytics_verdict() if probe else None
            if verdict is not None:
                await self._judge("analytics", token, verdict, expired)

    async def _announce(self, kind: str, token: str, expiry: Expiry) -> bool:
        """Say it once when `token` comes within the warning time and when it expires; True once expired."""
        if expiry.at is None:
            return False
        now = self._clock.now()
        state = state_of(expiry, now, self._settings.token_expiry_warn_s, rejected=False)
        key = (kind, token)
        if state == "valid" or self._announced.get(key) == state:
            return state == "expired"
        if self._announced.get(key) is None:  # a new token: forget the ones it replaced
            self._announced = {k: v for k, v in self._announced.items() if k[0] != kind}
        self._announced[key] = state
        at = ist_iso(expiry.at)
        if kind == "access":
            if state == "expiring":
                minutes = max(0.0, (expiry.at - now) / 60)
                line = f"The Upstox access token expires at {at} (in {minutes:.0f} min): renew it ({_RENEW})"
            else:
                line = (
                    f"The Upstox access token expired at {at}: orders, GTTs and positions are refused until a new "
                    f"one is set ({_RENEW})"
                )
        elif state == "expiring":
            line = f"The Upstox analytics token expires at {at}: set a new UPSTOX_ANALYTICS_TOKEN and restart"
        else:
            line = f"The Upstox analytics token expired at {at}: market data stops until a new one is set (restart)"
        logger.bind(tag="WARNING").warning(line)
        if state == "expiring":
            await self._event("token_expiring", token=kind, expires_at=at)
        else:
            await self._event("token_expired", token=kind, expires_at=at, effect=self._effect_of_expiry(kind))
        return state == "expired"

    def _effect_of_expiry(self, kind: str) -> str:
        if kind == "analytics":
            return "no live prices until a new UPSTOX_ANALYTICS_TOKEN is set (SL/TP run on cached prices)"
        if self._credentials.has_analytics:
            return "orders, GTTs and positions are refused (prices still stream on the analytics token)"
        return "orders, GTTs and positions are refused, and the feed waits for a new token (no live prices)"

    async def _judge(self, kind: str, token: str, verdict: TokenVerdict, expired: bool) -> None:
        """`token_rejected` when the broker starts refusing a token that has not simply expired (that was
        said already), `token_ok` when it accepts it again."""
        if verdict.valid is None or expired:
            return
        key = (kind, token)
        refused, was = not verdict.valid, self._refused.get(key)
        self._refused = {k: v for k, v in self._refused.items() if k[0] != kind or k == key}
        self._refused[key] = refused
        if refused and was is not True:
            logger.bind(tag="WARNING").warning(f"Upstox refuses the {kind} token: {verdict.detail}")
            await self._event("token_rejected", token=kind, error=verdict.detail)
        elif not refused and was is True:
            logger.success(f"Upstox accepts the {kind} token again")
            await self._event("token_ok", token=kind)

    async def _event(self, kind: str, **fields: Any) -> None:
        await add_event(self._redis, encode_event(kind, self._clock.now(), **fields))
