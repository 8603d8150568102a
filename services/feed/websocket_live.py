"""One live market-data connection: read, decode, ping, and decide when the link is dead or mute.

Four tasks share the connection. The reader only moves frames from the socket into the `Inbox`, so reading is
not starved by decoding or writing and pongs are seen on time at full load. The decoder turns frames into
ticks for the `FrameWriter`. The pinger sends our pings: no pong within `WS_PING_TIMEOUT_S` and no frame read
in that time either = dead link (a pong queued behind frames still arriving is late, not lost).
The watch ends the link when the server that has been pinging us stops (no ping and no data for
`WS_SERVER_PING_TIMEOUT_S`: Upstox pings while idle), or when data stops while the subscribed set must tick;
data silence alone with pings flowing is reported, not acted on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import Event

from libs.common.clock import Clock
from libs.common.logging import tagged
from libs.common.models import FeedState
from libs.common.service import cancel_and_wait
from libs.common.settings import Settings
from services.feed.decode import MARKET_INFO, NORMAL_OPEN, CorruptFrame, Frame, decode, market_open, skim
from services.feed.inbox import Inbox, Received
from services.feed.metrics import TICKS
from services.feed.silence import InstrumentWatch
from services.feed.status import StatusBoard
from services.feed.subscriptions import Subscriptions
from services.feed.writer import FrameWriter

success = tagged("SUCCESS")
warning = tagged("WARNING")


class FeedClientConnection(ClientConnection):
    """A client connection that also notes when the server pings us (the library answers the pong itself)."""

    last_server_ping_at: float | None = None
    server_pings = 0
    clock: Clock | None = None

    def process_event(self, event: Event) -> None:
        if isinstance(event, WsFrame) and event.opcode is Opcode.PING and self.clock is not None:
            self.last_server_ping_at = self.clock.now()
            self.server_pings += 1
        super().process_event(event)


@dataclass
class Link:
    """Facts about the current connection that the vouching loop reads. Times are epoch s."""

    ws: ClientConnection | None = None
    live: bool = False
    connected_at: float | None = None
    last_data_at: float | None = None  # last frame carrying feeds (this connection only)
    last_alive_at: float | None = None  # last frame, pong or server ping (this connection only)
    last_read_at: float | None = None  # last frame read off the socket (this connection only)
    market_open: bool | None = None  # None until the first market_info frame
    segments: dict[str, int] | None = None  # the last market_info: segment -> MarketStatus


def close_reason(ws: ClientConnection, exc: ConnectionClosed | None) -> tuple[str, bool]:
    """(why the connection ended, whether it was a network failure rather than a clean close)."""
    rcvd = exc.rcvd if exc is not None else ws.protocol.close_rcvd
    if rcvd is None:
        return "connection lost (no close frame)", True
    detail = f": {rcvd.reason}" if rcvd.reason else ""
    return f"closed by the server (code {rcvd.code}{detail})", rcvd.code not in (1000, 1001)


class LiveSession:
    """Runs live connections one after the other (`run(ws)`), keeping what outlives one of them."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        status: StatusBoard,
        subscriptions: Subscriptions,
        writer: FrameWriter,
        instruments: InstrumentWatch,
        warn: Callable[[str, str], None],
    ) -> None:
        self._s = settings
        self._clock = clock
        self._status = status
        self._subs = subscriptions
        self._writer = writer
        self._instruments = instruments
        self._warn = warn
        self.link = Link()
        self.inbox = Inbox(settings.feed_inbox_frames)
        self._absurd_logged: set[str] = set()

    async def run(self, ws: ClientConnection) -> tuple[str, bool]:
        """Run one live connection until it ends; returns (reason, whether it was a network failure)."""
        now = self._clock.now()
        self.link = Link(ws=ws, live=True, connected_at=now, last_alive_at=now)
        self.inbox.clear()
        status = self._status
        status.token_ok = True
        status.reconnect_attempts = 0
        status.outage_started_at = None
        status.next_retry_at = None
        status.last_error = ""
        success.success("WebSocket connection established!")
        await status.transition(FeedState.LIVE)
        tasks = [
            asyncio.create_task(self._read(ws), name="feed:websocket:receive"),
            asyncio.create_task(self._decode(), name="feed:websocket:decode"),
            asyncio.create_task(self._ping(ws), name="feed:websocket:ping"),
            asyncio.create_task(self._watch(ws), name="feed:websocket:silence"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.link.live = False  # stop vouching the moment the link is in doubt
            await cancel_and_wait(tasks, grace_s=0.5)
        first = next(t for t in tasks if t in done)
        exc = first.exception()
        if exc is not None:
            logger.opt(exception=exc).error(f"Feed task {first.get_name()} failed: {type(exc).__name__}: {exc}")
            return f"{first.get_name()} failed: {type(exc).__name__}", True
        result: tuple[str, bool] = first.result()
        return result

    # --- reading and decoding ------------------------------------------------------------------
    async def _read(self, ws: ClientConnection) -> tuple[str, bool]:
        link = self.link
        inbox = self.inbox
        put = inbox.put
        now_fn = self._clock.now
        try:
            async for message in ws:
                now = now_fn()
                link.last_alive_at = link.last_read_at = now
                put(message, now)
                if inbox.full:
                    await inbox.drained()  # memory bound: the decoder takes the whole backlog at once, so this is short
        except ConnectionClosed as exc:
            return close_reason(ws, exc)
        return close_reason(ws, None)

    async def _decode(self) -> tuple[str, bool]:
        take = self.inbox.take
        while True:
            received = await take()
            if len(received) == 1:
                message, at = received[0]
                try:
                    frame = decode(message, self._subs.symbol_of)
                except CorruptFrame as exc:
                    self._corrupt(exc)
                else:
                    await self._handle(frame, at)
            else:
                await self._catch_up(received)
            await asyncio.sleep(0)  # one frame per loop turn: the reader and the writer get theirs

    async def _catch_up(self, backlog: list[Received]) -> None:
        """Decode a backlog newest first, keeping only each symbol's newest tick (the rest counted superseded)."""
        taken: set[str] = set()
        symbol_of = self._subs.symbol_of
        newest_info = False
        superseded = 0
        everything = len(symbol_of)
        newest_at = backlog[-1][1]  # the writer stamps a batch with its newest arrival, as when frames merge
        for message, at in reversed(backlog):
            try:
                if len(taken) >= everything:  # every symbol has its newest tick: older live frames only count
                    kind, feeds = skim(message)
                    if kind != MARKET_INFO:
                        superseded += feeds
                        continue
                frame = decode(message, symbol_of, taken)
            except CorruptFrame as exc:
                self._corrupt(exc)
                continue
            superseded += frame.superseded
            if frame.segment_status is not None:
                if newest_info:
                    frame.segment_status = None  # an older market_info: the newest one already says the state
                newest_info = True
            await self._handle(frame, at, written_at=newest_at)
        self._status.superseded_ticks += superseded

    async def _handle(self, frame: Frame, at: float, *, written_at: float | None = None) -> None:
        """Take one decoded frame that arrived at `at` (`written_at`: the stamp of its batch, when caught up)."""
        status = self._status
        link = self.link
        status.last_message_at = max(at, status.last_message_at or 0.0)
        if frame.segment_status is not None and self._market_info(frame.segment_status):
            await status.flush()
        if frame.absurd:
            self._refuse(frame.absurd)
        if frame.ticks:
            if at > (link.last_data_at or 0.0):
                link.last_data_at = status.last_data_at = at
            self._writer.add(frame.ticks, written_at or at)
            self._instruments.saw(frame.ticks, at)
            TICKS.inc(len(frame.ticks))
        elif frame.unknown_keys and at > (link.last_data_at or 0.0):
            link.last_data_at = status.last_data_at = at

    def _corrupt(self, exc: CorruptFrame) -> None:
        self._status.corrupt_frames += 1
        self._warn("corrupt", f"Dropped a corrupt feed frame ({self._status.corrupt_frames} so far): {exc}")

    def _refuse(self, absurd: list[tuple[str, float]]) -> None:
        """Count ticks that are not prices; say so once per symbol (a stuck bad source would flood the log)."""
        self._status.absurd_prices += len(absurd)
        for symbol, ltp in absurd:
            if symbol not in self._absurd_logged:
                self._absurd_logged.add(symbol)
                warning.warning(f"Skipping absurd price for {symbol}: {ltp!r} (counted in feed:status absurd_prices)")

    def _market_info(self, segment_status: dict[str, int]) -> bool:
        """Record whether the market is open; True when that changed."""
        segments = {key.partition("|")[0] for key in self._subs.wanted.values()}
        is_open = market_open(segment_status, segments)
        self.link.segments = segment_status
        changed = is_open != self.link.market_open
        if changed:
            logger.info(f"Market is {'open' if is_open else 'closed'} (per market_info)")
        self.link.market_open = is_open
        self._status.market_open = is_open
        return changed

    # --- liveness ------------------------------------------------------------------------------
    async def _ping(self, ws: ClientConnection) -> tuple[str, bool]:
        timeout_s = self._s.ws_ping_timeout_s
        while True:
            await self._clock.sleep(self._s.ws_ping_interval_s)
            try:
                pong = await ws.ping()
                while not await self._answered(pong, timeout_s):
                    # Frames still arriving: the pong waits behind them in the socket, the link is alive.
                    if self._clock.now() - (self.link.last_read_at or 0.0) > timeout_s:
                        return f"no pong within {timeout_s:.1f} s (dead connection)", True
            except ConnectionClosed as exc:
                return close_reason(ws, exc)
            now = self._clock.now()
            self.link.last_alive_at = now
            self._status.last_message_at = now

    @staticmethod
    async def _answered(pong: Awaitable[float], timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(pong)
        except TimeoutError:
            return False
        return True

    async def _watch(self, ws: ClientConnection) -> tuple[str, bool]:
        """The server's side of liveness, and data silence (see the module doc)."""
        silence_s = self._s.feed_silence_timeout_s
        server_s = self._s.ws_server_ping_timeout_s
        step_s = min(0.5, silence_s / 4, server_s / 4)
        link = self.link
        reported = False
        while True:
            await self._clock.sleep(step_s)
            now = self._clock.now()
            pinged_at = getattr(ws, "last_server_ping_at", None)
            if pinged_at is not None:
                self._status.last_server_ping_at = pinged_at
                self._status.server_pings = getattr(ws, "server_pings", 0)
                link.last_alive_at = max(link.last_alive_at or 0.0, pinged_at)
                heard = max(pinged_at, link.last_data_at or 0.0)
                if now - heard > server_s:
                    return f"the server's pings stopped (none and no data for {server_s:.1f} s; dead connection)", True
            if link.market_open is False:
                continue  # a closed market sends nothing; pings alone prove the link
            quiet_s = now - (link.last_data_at or link.connected_at or now)
            if quiet_s <= silence_s:
                reported = False
            elif self._must_tick():
                return f"no data for {silence_s:.1f} s while the market is open (mute connection)", True
            elif not reported:
                reported = True
                warning.warning(
                    f"No market data for {silence_s:.1f} s, pings answered: the subscribed instruments are quiet "
                    "(no index subscribed to prove the market ticks); not reconnecting"
                )

    def _must_tick(self) -> bool:
        """The subscribed set holds an index whose segment trades (an index moves every second while open)."""
        segments = self.link.segments
        for key in self._subs.wanted.values():
            segment = key.partition("|")[0]
            if segment.endswith("_INDEX") and (segments is None or segments.get(segment) == NORMAL_OPEN):
                return True
        return False
