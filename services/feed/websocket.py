"""The Upstox v3 market-data WebSocket: connect, subscribe, receive, detect a dead or mute link, reconnect forever.

One connection at a time. Each attempt resolves the host through `libs.common.dns` (system DNS, then the
fallback servers, then the remembered address), authorizes over REST (or uses the redirect endpoint) and
connects to the resolved address with the host name kept for SNI, certificate checks and the Host header.

A live connection (`services.feed.websocket_live`) ends when the server closes or drops it, when a ping gets no pong
within `WS_PING_TIMEOUT_S` or the server's own pings stop (dead link), or when no data frame arrives for
`FEED_SILENCE_TIMEOUT_S` while a set that must tick is subscribed (mute link). Every end starts an outage:
attempts are counted per outage and logged with the guide's lines, delays come from `services.feed.backoff`,
and the loop never gives up. Our own backoff
applies even when a server accepts and then drops at once (the websockets library's reconnect iterator
would retry such a server immediately and grows its delay to 90 s, so it is not used).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import uuid
from urllib.parse import urljoin

import websockets
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from libs.common.clock import Clock, to_ist
from libs.common.credentials import Credentials
from libs.common.dns import DnsFailure, HostResolver, Resolution
from libs.common.logging import tagged
from libs.common.models import FeedState
from libs.common.price_cache import PriceCache
from libs.common.settings import Settings
from services.feed.authorize import REDIRECT_PATH, AuthRejected, Endpoint, FeedUnavailable, authorize
from services.feed.metrics import RECONNECTS
from services.feed.outage import Outage
from services.feed.silence import InstrumentWatch
from services.feed.status import StatusBoard
from services.feed.subscriptions import Change, Subscriptions
from services.feed.websocket_live import FeedClientConnection, Link, LiveSession
from services.feed.writer import FrameWriter

verbose = tagged("VERBOSE")
success = tagged("SUCCESS")
warning = tagged("WARNING")
error = tagged("ERROR")

_REDIRECT_CODES = (301, 302, 303, 307, 308)
_MAX_FRAME_BYTES = 16 * 1024 * 1024
_WARN_EVERY_S = 5.0


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The system's trust store plus `TLS_CA_FILE` when set. Verification is always on."""
    context = ssl.create_default_context()
    if settings.tls_ca_file:
        context.load_verify_locations(cafile=settings.tls_ca_file)
    return context


def subscription_request(method: str, instrument_keys: list[str], mode: str | None) -> bytes:
    """The JSON request Upstox expects, UTF-8 encoded (sent as a binary frame)."""
    data: dict[str, object] = {"instrumentKeys": instrument_keys}
    if mode is not None:
        data["mode"] = mode
    return json.dumps({"guid": uuid.uuid4().hex, "method": method, "data": data}).encode()


class FeedConnection:
    """Holds the market-data WebSocket and keeps it up forever. `run()` only returns when cancelled."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        redis: Redis,
        cache: PriceCache,
        status: StatusBoard,
        subscriptions: Subscriptions,
        resolver: HostResolver,
        rng: random.Random | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._s = settings
        self._credentials = credentials or Credentials(settings, redis, clock)
        self._token_used = ""
        self._clock = clock
        self._redis = redis
        self._cache = cache
        self._status = status
        self._subs = subscriptions
        self._resolver = resolver
        self._rng = rng or random.Random()
        self._ssl = tls_context(settings)
        self._api = Endpoint.parse(settings.api_base)
        self.writer = FrameWriter(cache, clock)
        self.instruments = InstrumentWatch(settings.halt_detect_s, settings.vouch_interval_s)
        self._warned_at: dict[str, float] = {}
        self.live = LiveSession(settings, clock, status, subscriptions, self.writer, self.instruments, self._warn)

    @property
    def credentials(self) -> Credentials:
        """The tokens this feed presents (the REST LTP poll shares them)."""
        return self._credentials

    # --- the reconnect loop --------------------------------------------------------------------
    async def run(self) -> None:
        outage: Outage | None = None
        at_once = False  # whether the next outage's first attempt goes at once
        token_rejected = False
        token_expired = False
        dns_failed = False
        await self._status.transition(FeedState.CONNECTING)
        try:
            while True:
                if outage is not None:
                    if token_expired:  # quietly, until a new token is stored (no churn against a dead token)
                        await self._credentials.wait_for_change(True, self._token_used, None)
                        logger.info("A new access token is in place; reconnecting")
                        delay_s = 0.0
                    elif token_rejected:
                        delay_s = outage.auth_retry(self._s.auth_retry_delay_s)
                    else:
                        delay_s = outage.next_attempt()
                    await self._announce_attempt(outage, delay_s)
                    if token_rejected and not token_expired:  # a new token cuts the wait short
                        await self._credentials.wait_for_change(True, self._token_used, delay_s)
                    else:
                        await self._clock.sleep(delay_s)
                    check_dns = dns_failed or outage.attempts % self._s.dns_check_every_attempts == 0
                else:
                    check_dns = False
                reconnecting = outage is not None
                try:
                    ws = await self._open(check_dns=check_dns, reconnecting=reconnecting)
                except AuthRejected as exc:
                    token_rejected, dns_failed = True, False
                    self._status.token_ok = False
                    expired_at = await self._expired_at()
                    token_expired = expired_at is not None
                    if expired_at is not None:
                        self._status.last_error = f"access token expired at {expired_at}; waiting for a new one"
                        warning.warning(
                            f"The access token expired at {expired_at}: the feed waits for a new one "
                            "(POST /api/v1/auth/token or python -m services.api token set)"
                        )
                    else:
                        which = "analytics" if self._credentials.has_analytics else "access"
                        self._status.last_error = f"{which} token rejected ({exc})"
                        error.error(
                            f"{which.capitalize()} token rejected (HTTP {exc.status_code}): "
                            f"set a valid UPSTOX_{which.upper()}_TOKEN; "
                            f"retrying about every {self._s.auth_retry_delay_s:.0f} s"
                        )
                        self._failed(reconnecting, f" - {which} token rejected (HTTP {exc.status_code})")
                except DnsFailure as exc:
                    token_rejected, token_expired, dns_failed = False, False, True
                    self._status.network_errors += 1
                    self._status.last_error = str(exc)
                    self._failed(reconnecting, " - DNS still failing")
                except FeedUnavailable as exc:
                    token_rejected, token_expired, dns_failed = False, False, False
                    if exc.network:
                        self._status.network_errors += 1
                    self._status.last_error = str(exc)
                    self._failed(reconnecting, "")
                    verbose.info(f"Reason: {exc}")
                else:
                    token_rejected = token_expired = dns_failed = False
                    if reconnecting:
                        success.success("Reconnection successful!")
                    outage = None
                    live_since = self._clock.now()
                    reason, network = await self._live(ws)
                    # The first attempt after a drop goes at once (the official SDK's way), unless the link lived
                    # less than the base delay: a server that drops every link at once waits the backoff's floor.
                    at_once = self._clock.now() - live_since >= self._s.reconnect_base_delay_s
                    if network:
                        self._status.network_errors += 1
                    self._status.last_error = reason
                    warning.warning("WebSocket connection closed")
                    verbose.info(f"Reason: {reason}")
                    await self._close(ws, abort=network)
                if outage is None:
                    outage = Outage.from_settings(self._s, self._rng, at_once=at_once)
                    at_once = False
                    self._status.outage_started_at = self._clock.now()
                    await self._status.transition(FeedState.RECONNECTING, self._status.last_error)
        finally:
            self.link.live = False
            if self.link.ws is not None:
                await self._close(self.link.ws, abort=False)

    async def _expired_at(self) -> str | None:
        """When the rejected token is a swappable access token whose expiry has passed: that time (IST)."""
        if self._credentials.has_analytics:
            return None  # the analytics token lives a year and is set in .env; retry slowly instead
        held = await self._credentials.held_access()
        if held.token != self._token_used:
            return None  # already replaced: the next attempt uses the new one
        expiry = self._credentials.expiry(held)
        if expiry.at is None or expiry.at > self._clock.now():
            return None
        return to_ist(expiry.at).strftime("%Y-%m-%d %H:%M:%S IST")

    async def _announce_attempt(self, outage: Outage, delay_s: float) -> None:
        budget = self._s.reconnect_attempts_per_cycle
        if outage.attempts > budget and outage.attempt_in_cycle == 1:
            warning.warning(
                f"Still disconnected after {outage.attempts - 1} attempts; "
                f"retrying every {self._s.reconnect_max_delay_s:.0f} s (cycle {outage.cycle})"
            )
        self._status.reconnect_attempts = outage.attempts
        RECONNECTS.inc()
        self._status.next_retry_at = self._clock.now() + delay_s
        verbose.info(f"Reconnecting (attempt {outage.attempt_in_cycle}/{budget})...")
        verbose.info(f"Waiting {delay_s:.1f} seconds before retry (with jitter)...")
        await self._status.flush()

    def _failed(self, reconnecting: bool, suffix: str) -> None:
        error.error(f"{'Reconnection' if reconnecting else 'Connection'} failed{suffix}")

    # --- opening a connection ------------------------------------------------------------------
    async def _open(self, *, check_dns: bool, reconnecting: bool) -> ClientConnection:
        """Resolve, authorize, connect and subscribe. Raises AuthRejected, DnsFailure or FeedUnavailable."""
        api = self._api
        resolution = await (self._resolver.check(api.host) if check_dns else self._resolver.resolve(api.host))
        self._status.dns_resolver = resolution.resolver
        self._status.resolved_address = resolution.address
        if reconnecting:
            if resolution.via_fallback:
                verbose.info("Attempting reconnection with fallback DNS...")
            else:
                verbose.info("Attempting reconnection...")
        else:
            logger.info(f"Connecting to the Upstox market-data feed via {api.host_header}...")
        token = self._token_used = await self._credentials.market_data()
        if self._s.feed_connect_style == "redirect":
            scheme = "wss" if api.secure else "ws"
            uri = f"{scheme}://{api.host_header}{api.path}{REDIRECT_PATH}"
            headers = {"Authorization": f"Bearer {token}", "Accept": "*/*"}
            ws = await self._connect(uri, resolution, headers)
        else:
            uri = await authorize(api, resolution.address, token, self._ssl, self._s.ws_open_timeout_s)
            ws = await self._connect(uri, resolution, None)
        try:
            await self._subscribe_all(ws)
        except ConnectionClosed as exc:
            await self._close(ws, abort=True)
            raise FeedUnavailable(f"closed while subscribing: {exc}", network=True) from exc
        except BaseException:  # cancelled (shutdown) before the connection was handed over: do not leak it
            ws.transport.abort()
            raise
        return ws

    async def _connect(
        self, uri: str, known: Resolution, headers: dict[str, str] | None, *, redirects_left: int = 3
    ) -> ClientConnection:
        target = Endpoint.parse(uri)
        resolution = known if target.host == known.host else await self._resolver.resolve(target.host)
        options: dict[str, object] = {}
        if target.secure:
            options.update(ssl=self._ssl, server_hostname=target.host)
        try:
            ws = await websockets.connect(
                uri,
                additional_headers=headers,
                host=resolution.address,
                port=target.port,
                open_timeout=self._s.ws_open_timeout_s,
                ping_interval=None,  # our own pinger below: it also records when the link was last alive
                close_timeout=self._s.ws_ping_timeout_s,
                max_size=_MAX_FRAME_BYTES,
                compression=None,
                user_agent_header="upstox-resilience-guard",
                create_connection=FeedClientConnection,
                **options,  # type: ignore[arg-type]
            )
            if isinstance(ws, FeedClientConnection):
                ws.clock = self._clock
            return ws
        except InvalidStatus as exc:
            raise self._status_error(exc) from exc
        except ValueError as exc:
            # websockets will not follow a cross-origin redirect when we pin the address; we follow it,
            # resolving the new host ourselves. Credentials are not sent to another origin.
            cause = exc.__cause__
            location = self._redirect_location(cause)
            if location is None or redirects_left <= 0:
                raise FeedUnavailable(f"WebSocket connect failed: {exc}", network=False) from exc
            return await self._connect(urljoin(uri, location), resolution, None, redirects_left=redirects_left - 1)
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            raise FeedUnavailable(f"WebSocket connect failed: {type(exc).__name__}: {exc}", network=True) from exc

    @staticmethod
    def _redirect_location(exc: BaseException | None) -> str | None:
        if isinstance(exc, InvalidStatus) and exc.response.status_code in _REDIRECT_CODES:
            return exc.response.headers.get("Location")
        return None

    @staticmethod
    def _status_error(exc: InvalidStatus) -> Exception:
        code = exc.response.status_code
        if code in (401, 403):
            return AuthRejected(code, "the WebSocket handshake")
        return FeedUnavailable(f"WebSocket handshake answered HTTP {code}", network=code >= 500)

    async def _subscribe_all(self, ws: ClientConnection) -> None:
        """Subscribe every wanted symbol, re-reading `feed:subscriptions` first (pub/sub may have lost some)."""
        try:
            await self._subs.refresh(self._redis)
        except RedisError as exc:
            self._warn("redis-subs", f"Cannot re-read feed:subscriptions ({type(exc).__name__}); using the known set")
        wanted = self._subs.wanted
        modes = self._subs.modes(self._s.feed_mode)
        by_mode: dict[str, list[str]] = {}
        for symbol, key in wanted.items():
            by_mode.setdefault(modes[symbol], []).append(key)
        for mode, keys_ in by_mode.items():
            await ws.send(subscription_request("sub", keys_, mode))
        self._note_modes(modes)
        others = "".join(f"; {m}: {len(k)}" for m, k in by_mode.items() if m != self._s.feed_mode)
        logger.info(f"Subscribed {len(wanted)} symbols (mode {self._s.feed_mode}{others})")

    def _note_modes(self, modes: dict[str, str]) -> None:
        self._status.subscribed_symbols = len(modes)
        self._status.mode = self._s.feed_mode
        self._status.other_modes = {s: m for s, m in modes.items() if m != self._s.feed_mode}

    async def apply(self, change: Change) -> None:
        """Send (un)subscriptions for `change` on the live connection; a reconnect resubscribes anyway."""
        modes = self._subs.modes(self._s.feed_mode)
        self._note_modes(modes)
        ws = self.link.ws
        if ws is None or not self.link.live:
            return
        still_wanted = set(self._subs.wanted.values())
        by_mode: dict[str, list[str]] = {}
        for symbol, key in change.added.items():
            by_mode.setdefault(modes.get(symbol, self._s.feed_mode), []).append(key)
        try:
            for mode, keys_ in by_mode.items():
                await ws.send(subscription_request("sub", keys_, mode))
            gone = [key for key in change.removed.values() if key not in still_wanted]
            if gone:
                await ws.send(subscription_request("unsub", gone, None))
        except ConnectionClosed:
            return
        if change.added:
            logger.info(f"Subscribed {', '.join(sorted(change.added))}")
        if change.removed:
            logger.info(f"Unsubscribed {', '.join(sorted(change.removed))}")

    # --- a live connection ---------------------------------------------------------------------
    @property
    def link(self) -> Link:
        return self.live.link

    async def _live(self, ws: ClientConnection) -> tuple[str, bool]:
        return await self.live.run(ws)

    async def _close(self, ws: ClientConnection, *, abort: bool) -> None:
        if abort:
            ws.transport.abort()
            return
        try:
            async with asyncio.timeout(self._s.ws_ping_timeout_s):
                await ws.close()
        except (TimeoutError, OSError, ConnectionClosed):
            ws.transport.abort()

    # --- misc ----------------------------------------------------------------------------------
    def vouch_as_of(self) -> float | None:
        """The time up to which a quiet subscribed symbol is known unchanged, or None when the link is down.

        Market open: the last data frame (a silent feed vouches for nothing newer). Market closed: the
        last frame or pong.
        """
        link = self.link
        if not link.live:
            return None
        return link.last_alive_at if link.market_open is False else link.last_data_at

    def _warn(self, what: str, message: str) -> None:
        now = self._clock.monotonic()
        if now - self._warned_at.get(what, -1e9) >= _WARN_EVERY_S:
            self._warned_at[what] = now
            warning.warning(message)
