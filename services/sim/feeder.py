"""The WebSocket feeder: Upstox v3's market-data feed on its own port (like Upstox's feeder host).

Clients reach it through an authorized URI (`.../market-data-feeder/v2/upstox-developer-api/feeds?
requestId=..&code=..`, the code single-use). Every connection gets `market_info` first, a snapshot
(type initial_feed, no type field on the wire) after each `sub`/`change_mode`, then `live_feed` frames:
one frame per market step per connection with the ticks of its subscribed keys in its modes.
WebSocket pings are sent every `sim_ws_ping_interval_s`; there is no application heartbeat.

Faults: `drop` aborts every TCP connection (no close frame) and stops listening for the window;
`close` sends a close frame (code 1000 or 1011) and closes new connections at once during the window;
`mute` keeps sockets open (pings flow) but sends no data; `auth` answers the handshake with 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from libs.common.clock import Clock
from services.sim.faults import AuthCodes, Faults
from services.sim.frames import EntryCache, live_frame, market_info_frame, snapshot_frame
from services.sim.market import Market

FEED_PATH = "/market-data-feeder/v2/upstox-developer-api/feeds"
# mode -> (individual limit, combined limit) per the reference's limit table.
LIMITS: dict[str, tuple[int, int]] = {
    "ltpc": (5000, 2000),
    "option_greeks": (3000, 2000),
    "full": (2000, 1500),
    "full_d30": (50, 1500),
}
_conn_ids = itertools.count(1)


@dataclass(eq=False)
class FeedConnection:
    """One client connection: its subscriptions (instrument index -> mode) and outgoing queue."""

    ws: ServerConnection
    id: int = field(default_factory=lambda: next(_conn_ids))
    subs: dict[int, str] = field(default_factory=dict)
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    frames_sent: int = 0
    requests: int = 0

    def mode_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for mode in self.subs.values():
            counts[mode] = counts.get(mode, 0) + 1
        return counts


def over_limit(subs: dict[int, str]) -> str | None:
    """Why `subs` breaks the per-mode limits (individual when one mode is used, else combined), or None."""
    counts: dict[str, int] = {}
    for mode in subs.values():
        counts[mode] = counts.get(mode, 0) + 1
    combined = len(counts) > 1
    for mode, count in counts.items():
        limit = LIMITS[mode][1 if combined else 0]
        if count > limit:
            kind = "combined" if combined else "individual"
            return f"{count} {mode} keys exceed the {kind} limit of {limit}"
    return None


class Feeder:
    """The feeder server. `start()` listens; the market's listeners push ticks into `broadcast`."""

    def __init__(
        self,
        market: Market,
        faults: Faults,
        codes: AuthCodes,
        clock: Clock,
        *,
        ping_interval_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.market = market
        self.faults = faults
        self.codes = codes
        self.clock = clock
        self.ping_interval_s = ping_interval_s
        self.ssl_context = ssl_context
        self.connections: set[FeedConnection] = set()
        self.host = "127.0.0.1"
        self.port = 0
        self._servers: list[Server] = []
        self._listening: Server | None = None
        self._reopen: asyncio.Task[None] | None = None
        self.handshakes_refused = 0
        self.accepted = 0
        market.listeners.append(self.broadcast)
        market.status_listeners.append(self.send_market_info)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = a free port); return the port."""
        self.host = host
        self.port = port
        await self._listen()
        return self.port

    async def _listen(self) -> None:
        server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=self.ping_interval_s,
            ping_timeout=max(20.0, 3 * self.ping_interval_s),
            ssl=self.ssl_context,
            max_size=2**20,
            logger=None,
        )
        self._servers.append(server)
        self._listening = server
        if self.port == 0:
            self.port = int(next(iter(server.sockets)).getsockname()[1])

    def _stop_listening(self) -> None:
        if self._listening is not None:
            self._listening.close(close_connections=False)
            self._listening = None

    async def stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen
        for conn in list(self.connections):
            conn.ws.transport.abort()
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()

    # --- faults --------------------------------------------------------------------------------
    async def drop(self, duration_s: float) -> None:
        """Abort every TCP connection (no close frame) and refuse new ones for `duration_s`."""
        self._stop_listening()
        for conn in list(self.connections):
            conn.ws.transport.abort()
        logger.warning(f"sim fault drop: aborted {len(self.connections)} connection(s), refusing for {duration_s}s")
        if self._reopen is not None:
            self._reopen.cancel()
        self._reopen = asyncio.create_task(self._reopen_after(duration_s), name="sim-feeder-reopen")

    async def _reopen_after(self, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        await self._listen()
        logger.info("sim fault drop over: feeder listening again")

    async def close_all(self, code: int) -> None:
        """Send a close frame with `code` to every connection."""
        conns = list(self.connections)
        await asyncio.gather(*(c.ws.close(code, "simulated close") for c in conns), return_exceptions=True)

    # --- handshake -----------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        code = parse_qs(url.query).get("code", [""])[0]
        if self.faults.active("auth"):
            self.handshakes_refused += 1
            return _reject(HTTPStatus.UNAUTHORIZED)
        if url.path != FEED_PATH:
            return _reject(HTTPStatus.NOT_FOUND)
        if not code or not self.codes.consume(code):
            self.handshakes_refused += 1
            return _reject(HTTPStatus.UNAUTHORIZED)
        return None

    # --- connection ----------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        if self.faults.active("close"):
            await ws.close(self.faults.close_code, "simulated close")
            return
        conn = FeedConnection(ws)
        self.connections.add(conn)
        self.accepted += 1
        writer = asyncio.create_task(self._writer(conn), name=f"sim-feeder-writer-{conn.id}")
        self._enqueue(conn, market_info_frame(self.market.segment_status(), self._now_ms()))
        try:
            async for message in ws:
                if isinstance(message, str):
                    # Upstox wants requests in binary frames; a text frame is ignored.
                    logger.debug(f"feeder connection {conn.id}: text frame ignored")
                    continue
                self._on_request(conn, message)
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _writer(self, conn: FeedConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await conn.queue.get()
                await conn.ws.send(frame)
                conn.frames_sent += 1

    def _enqueue(self, conn: FeedConnection, frame: bytes) -> None:
        if self.faults.active("mute"):
            return
        conn.queue.put_nowait(frame)

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _on_request(self, conn: FeedConnection, raw: bytes) -> None:
        conn.requests += 1
        try:
            request = json.loads(raw)
            method = request["method"]
            data = request.get("data") or {}
            keys = data.get("instrumentKeys") or []
            mode = data.get("mode") or "ltpc"
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning(f"feeder connection {conn.id}: unreadable request ignored")
            return
        if mode == "full_d5":
            mode = "full"
        if method not in ("sub", "unsub", "change_mode") or mode not in LIMITS or not isinstance(keys, list):
            logger.warning(f"feeder connection {conn.id}: bad request ignored (method={method!r}, mode={mode!r})")
            return
        indices = [i for k in keys if isinstance(k, str) and (i := self.market.index.get(k)) is not None]
        if method == "unsub":
            for idx in indices:
                conn.subs.pop(idx, None)
            return
        proposed = dict(conn.subs)
        proposed.update(dict.fromkeys(indices, mode))
        problem = over_limit(proposed)
        if problem:
            # Upstox documents no reaction to an over-limit request; the simulator ignores the request.
            logger.warning(f"feeder connection {conn.id}: {method} ignored: {problem}")
            return
        conn.subs = proposed
        if indices:
            cache = EntryCache(self.market, snapshot=True)
            entries = [cache.get(idx, mode) for idx in indices]
            self._enqueue(conn, snapshot_frame(entries, self._now_ms()))

    # --- market listeners ----------------------------------------------------------------------
    def broadcast(self, changed: list[int]) -> None:
        """Send one live_feed frame per connection with the changed instruments it subscribes."""
        if not self.connections or self.faults.active("mute"):
            return
        cache = EntryCache(self.market)
        ts_ms = self._now_ms()
        for conn in self.connections:
            subs = conn.subs
            if not subs:
                continue
            entries = [cache.get(idx, mode) for idx in changed if (mode := subs.get(idx)) is not None]
            if entries:
                conn.queue.put_nowait(live_frame(entries, ts_ms))

    def send_market_info(self) -> None:
        """Send the current segment status to every connection (after a status change)."""
        frame = market_info_frame(self.market.segment_status(), self._now_ms())
        for conn in self.connections:
            self._enqueue(conn, frame)

    def state(self) -> list[dict[str, object]]:
        """Per-connection summary for `/sim/state`."""
        return [
            {"id": c.id, "subscriptions": c.mode_counts(), "frames_sent": c.frames_sent, "requests": c.requests}
            for c in sorted(self.connections, key=lambda c: c.id)
        ]


def _reject(status: HTTPStatus) -> Response:
    body = f"{status.value} {status.phrase}\n".encode()
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)
