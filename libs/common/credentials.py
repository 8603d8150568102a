"""The Upstox tokens: which one to present where, where a replaced one lives, and when each one dies.

Two credentials:
- the **access token** (`UPSTOX_ACCESS_TOKEN`, or `SIM_ACCESS_TOKEN` in simulator mode) for orders, GTTs,
  positions and the profile. Upstox kills it at 03:30 IST the day after it was issued.
- the **analytics token** (`UPSTOX_ANALYTICS_TOKEN`, optional, one year, read-only) for market data: the
  feed's authorize + WebSocket and LTP reads. Without it the access token serves market data too.

A new access token (hot swap: the api, `python -m services.api token set`, `login`, the notifier) is
stored in Redis under `auth:access-token`, encrypted with Fernet under a key derived from `CREDENTIALS_KEY`,
so Redis dumps, AOF files, replicas and `redis-cli MONITOR` only ever hold ciphertext. A small notice on
`auth:changes` (no token in it) wakes whoever waits for a new one. Every service reads the token here at
the moment it uses it, so a swap takes effect at the next call, with no restart.

The stored token wins over the environment's until the environment's token changes: the record remembers
a fingerprint of the token it replaced, so editing `.env` and restarting still works as it always did.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography.fernet import Fernet, InvalidToken
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import IST, Clock, SystemClock, to_ist
from libs.common.logging import redact_secret
from libs.common.settings import Settings

CredentialState = Literal["valid", "expiring", "expired", "rejected"]
_POLL_S = 2.0  # a waiter re-reads this often too: pub/sub loses notices sent while it was disconnected
_REDIS_QUIET_S = 5.0  # after a failed read, use the last token this long without asking Redis again


class CredentialsLocked(Exception):
    """No `CREDENTIALS_KEY` is set, so a token cannot be stored safely; nothing was stored."""


@dataclass(frozen=True, slots=True)
class HeldToken:
    """A token and where it came from. `source`: env, sim, api, cli, login or notifier."""

    token: str
    source: str
    since: float  # epoch s it was stored (or this process first saw it)
    user_id: str = ""

    def __repr__(self) -> str:  # never print the token itself
        return f"HeldToken(source={self.source!r}, since={self.since}, user_id={self.user_id!r})"


@dataclass(frozen=True, slots=True)
class Expiry:
    """When a token dies (epoch s; None = never or unknown) and how we know (`basis`)."""

    at: float | None
    basis: Literal["token", "03:30 IST rule", "never", "unknown"]


class Credentials:
    """Reads the tokens at the moment of use; stores a new access token (encrypted) and announces it.

    Without `redis` only the environment's tokens exist (unit tests, the paper broker).
    """

    def __init__(self, settings: Settings, redis: Redis | None = None, clock: Clock | None = None) -> None:
        self._settings = settings
        self._redis = redis
        self._clock = clock or SystemClock()
        key = settings.credentials_key.get_secret_value()
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest())) if key else None
        self._env = HeldToken(
            settings.access_token.get_secret_value(),
            "sim" if settings.simulator_mode else "env",
            self._clock.now(),
        )
        self._analytics = settings.upstox_analytics_token.get_secret_value()
        self._decrypted: tuple[bytes, HeldToken] | None = None
        self._last = self._env
        self._redis_failed_at: float | None = None
        self._warned_undecryptable = False

    @property
    def has_analytics(self) -> bool:
        return bool(self._analytics)

    @property
    def analytics_token(self) -> str:
        """The analytics token, empty when none is configured."""
        return self._analytics

    async def access(self) -> str:
        """The access token to present now (for orders, GTTs, positions, the profile)."""
        return (await self.held_access()).token

    async def market_data(self) -> str:
        """The token for the feed and LTP reads: the analytics token when configured, else the access token."""
        return self._analytics or await self.access()

    async def held_access(self) -> HeldToken:
        """The access token in force with its source: the stored one unless `.env` changed since it was stored.

        If Redis cannot be read, the last token read is kept (a Redis outage must neither take the order path
        down nor slow every feed reconnect by a Redis timeout).
        """
        if self._redis is None:
            return self._env
        failed_at = self._redis_failed_at
        if failed_at is not None and self._clock.monotonic() - failed_at < _REDIS_QUIET_S:
            return self._last
        try:
            blob = await self._redis.get(keys.ACCESS_TOKEN)
        except (RedisError, OSError):
            self._redis_failed_at = self._clock.monotonic()
            return self._last
        self._redis_failed_at = None
        held = self._open(blob) if blob else None
        self._last = held if held is not None else self._env
        return self._last

    def _open(self, blob: bytes | str) -> HeldToken | None:
        raw = blob.encode() if isinstance(blob, str) else blob
        if self._decrypted is not None and self._decrypted[0] == raw:
            return self._decrypted[1]
        if self._fernet is None:
            self._undecryptable("no CREDENTIALS_KEY is set")
            return None
        try:
            record = json.loads(self._fernet.decrypt(raw))
            held = HeldToken(str(record["token"]), str(record["source"]), float(record["since"]), record["user_id"])
            replaces = str(record["replaces"])
        except (InvalidToken, ValueError, KeyError, TypeError):
            self._undecryptable("it was encrypted under another CREDENTIALS_KEY, or is corrupt")
            return None
        if replaces != _fingerprint(self._env.token):
            return None  # the environment's token was changed after this swap: the newer one wins
        redact_secret(held.token)
        self._decrypted = (raw, held)
        return held

    def _undecryptable(self, why: str) -> None:
        if not self._warned_undecryptable:
            self._warned_undecryptable = True
            logger.warning(f"Cannot read the stored access token ({why}); using UPSTOX_ACCESS_TOKEN")

    async def store_access(self, token: str, *, source: str, user_id: str = "") -> HeldToken:
        """Make `token` the access token of every service: store it encrypted, then publish a notice.

        Check the token with the broker first (see `services.api.token_swap`). Raises CredentialsLocked
        without `CREDENTIALS_KEY`, RedisError when Redis cannot be written (then nothing changed).
        """
        if self._fernet is None:
            raise CredentialsLocked("set CREDENTIALS_KEY (any long random string; `make up` writes one to .env)")
        if self._redis is None:
            raise CredentialsLocked("no Redis to store the token in")
        redact_secret(token)
        held = HeldToken(token, source, self._clock.now(), user_id)
        record = {
            "token": token,
            "source": source,
            "since": held.since,
            "user_id": user_id,
            "replaces": _fingerprint(self._env.token),
        }
        await self._redis.set(keys.ACCESS_TOKEN, self._fernet.encrypt(json.dumps(record).encode()))
        await self._redis.publish(keys.CREDENTIALS_CHANNEL, "access")
        self._last = held
        return held

    async def wait_for_change(self, market_data: bool, current: str, timeout_s: float | None) -> bool:
        """Wait until the token in use (`market_data`: the feed's, else the access token) is not `current`.

        Returns True when it changed, False on timeout (`None`: wait as long as it takes).
        """
        deadline = None if timeout_s is None else self._clock.monotonic() + timeout_s

        async def changed() -> bool:
            return (await self.market_data() if market_data else await self.access()) != current

        if self._redis is None or (market_data and self._analytics):
            # nothing replaces it at runtime: wait out the timeout (a caller without one polls slowly)
            await self._clock.sleep(_POLL_S if deadline is None else max(0.0, deadline - self._clock.monotonic()))
            return False
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.subscribe(keys.CREDENTIALS_CHANNEL)
            while True:
                if await changed():
                    return True
                left_s = _POLL_S if deadline is None else deadline - self._clock.monotonic()
                if left_s <= 0:
                    return False
                try:
                    await pubsub.get_message(timeout=min(left_s, _POLL_S))
                except (RedisError, OSError):
                    await asyncio.sleep(min(left_s, _POLL_S))
        finally:
            with contextlib.suppress(RedisError, OSError, asyncio.CancelledError):
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    def expiry(self, held: HeldToken) -> Expiry:
        """When the access token `held` dies: its own `exp` claim when it carries one, else the 03:30 IST rule."""
        if held.source == "sim" and held.token == self._settings.sim_access_token.get_secret_value():
            return Expiry(None, "never")  # the simulator's fixed token
        exp = token_exp(held.token)
        if exp is not None:
            return Expiry(exp, "token")
        return Expiry(next_0330_ist(held.since), "03:30 IST rule")

    def analytics_expiry(self) -> Expiry:
        exp = token_exp(self._analytics)
        return Expiry(exp, "token") if exp is not None else Expiry(None, "unknown")


def state_of(expiry: Expiry, now: float, warn_s: float, *, rejected: bool) -> CredentialState:
    """`expired` once its time passed, `rejected` when the broker refused it, `expiring` within `warn_s`."""
    if expiry.at is not None and now >= expiry.at:
        return "expired"
    if rejected:
        return "rejected"
    if expiry.at is not None and expiry.at - now <= warn_s:
        return "expiring"
    return "valid"


def next_0330_ist(after: float) -> float:
    """Epoch s of the first 03:30 IST strictly after `after` (when Upstox kills access tokens)."""
    local = to_ist(after)
    cutoff = datetime(local.year, local.month, local.day, 3, 30, tzinfo=IST)
    if cutoff.timestamp() <= after:
        cutoff += timedelta(days=1)
    return cutoff.timestamp()


def token_exp(token: str) -> float | None:
    """The `exp` claim (epoch s) of a JWT-shaped token, None when it carries none. The signature is not
    checked: the broker is the judge of validity, this only tells when to expect the end."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload["exp"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]
