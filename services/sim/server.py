"""The running simulator: market + order book + REST app + feeder (+ DNS, + TLS), wired together.

Use it in tests (and in other services' tests) through `running_simulator`:

    async with running_simulator(settings) as sim:
        sim.rest_url        # "http://127.0.0.1:<port>" (https with SIM_TLS)
        sim.feed_port       # the feeder's port (authorized URIs point here)
        sim.dns_port        # the DNS responder's UDP port (0 when SIM_DNS_PORT is 0)
        sim.ca_path         # CA PEM to trust when SIM_TLS is on, else None
        sim.token           # the accepted access token
        sim.market          # direct control: sim.market.set_price("BOSCHLTD", 57500), .step(), .force_status(...)
        await sim.inject("drop", 2.0)   # same as POST /sim/faults

Pass `rest_port=0` / `feed_port=0` (the defaults of `running_simulator`) to get free ports; a `clock`
(e.g. `ManualClock`) to drive market hours and timestamps; `auto_tick=False` to move the market only
with `sim.market.step()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import uvicorn
from loguru import logger

from libs.common.clock import Clock, SystemClock, to_ist
from libs.common.instruments import Instrument, load_instruments, master_file_gz
from libs.common.service import EmbeddedServer, cancel_and_wait
from libs.common.settings import Settings
from services.sim.app import create_app
from services.sim.dns_responder import DnsResponder
from services.sim.faults import AuthCodes, FaultKind, Faults
from services.sim.feeder import FEED_PATH, Feeder
from services.sim.gtt import GttBook
from services.sim.market import Market
from services.sim.orders import OrderBook
from services.sim.settings import SimSettings
from services.sim.tls import DEFAULT_NAMES, SimTLS, make_tls
from services.sim.tokens import Scope, TokenRegistry


class _DenialNoise(logging.Filter):
    """uvicorn logs a redirect/401 sent as a WebSocket denial response as an error; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_DenialNoise())


class Simulator:
    """One simulator instance. `start()` opens the listeners; `stop()` closes them."""

    def __init__(self, settings: Settings, clock: Clock | None = None, *, auto_tick: bool = True) -> None:
        # The services' settings run a simulator with its own defaults (a test's shared `settings`).
        self._settings = s = settings if isinstance(settings, SimSettings) else SimSettings.of(settings)
        self.clock: Clock = clock or SystemClock()
        self.auto_tick = auto_tick
        self.instruments = self._listed(self.clock.now())
        self._extra_from = len(self.instruments) - s.sim_extra_instruments
        self.market = Market(
            self.instruments,
            seed=s.sim_seed,
            clock=self.clock,
            follow_market_hours=s.sim_follow_market_hours,
            moves_per_step=s.sim_ticks_per_interval,
        )
        self.faults = Faults()
        self.blocked_order_calls = 0  # order calls refused by the ip_block fault
        self.codes = AuthCodes()
        self.tokens = TokenRegistry(self.clock, s.sim_access_token.get_secret_value())
        self.background: set[asyncio.Task[None]] = set()
        self.orders = OrderBook(
            self.market,
            self.clock,
            faults=self.faults,
            rate_limit_per_s=s.sim_order_rate_limit_per_s,
            rate_limit_per_min=s.sim_order_rate_limit_per_min,
        )
        self.gtt = GttBook(self.market, self.orders, self.clock)
        self.tls: SimTLS | None = None
        if s.sim_tls:
            self.tls = make_tls(s.sim_tls_ca_path, s.sim_hostnames)
        self.feeder = Feeder(
            self.market,
            self.faults,
            self.codes,
            self.clock,
            ping_interval_s=s.sim_ws_ping_interval_s,
            ssl_context=self.tls.server_context() if self.tls else None,
        )
        self.dns: DnsResponder | None = None
        self.rest_port = 0
        self._server: EmbeddedServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._instrument_file: tuple[date, bytes] | None = None  # the day it lists, the gzipped file

    # --- addresses -----------------------------------------------------------------------------
    @property
    def settings(self) -> SimSettings:
        """What it was started with (read by the endpoints)."""
        return self._settings

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def rest_url(self) -> str:
        return f"{self.scheme}://{_url_host(self._settings.sim_host)}:{self.rest_port}"

    @property
    def feed_port(self) -> int:
        return self.feeder.port

    @property
    def dns_port(self) -> int:
        return self.dns.port if self.dns else 0

    @property
    def ca_path(self) -> Path | None:
        return self.tls.ca_path if self.tls else None

    @property
    def token(self) -> str:
        return self._settings.sim_access_token.get_secret_value()

    def token_ok(self, token: str, scope: Scope = "account") -> bool:
        """May `token` be used now for an account call (orders, GTT, positions, profile) or market data?"""
        return self.tokens.check(token, scope)

    def authorized_uri(self, host: str) -> str:
        """A fresh single-use feeder URI on `host` (the host name the client used)."""
        request_id, code = self.codes.issue()
        ws = "wss" if self.tls else "ws"
        return f"{ws}://{_url_host(host)}:{self.feed_port}{FEED_PATH}?requestId={request_id}&code={code}"

    def _listed(self, now: float) -> list[Instrument]:
        """The instruments listed on the IST day of `now` (that day's F&O contracts)."""
        s = self._settings
        return load_instruments(s.sim_extra_instruments, now=now, expiry_weekday=s.fno_expiry_weekday)

    def instrument_file(self) -> bytes:
        """Upstox's `complete.json.gz` as of today on the simulator's clock: a new day lists its contracts (and
        they start trading); yesterday's expired ones are no longer in the file."""
        self.list_today()
        assert self._instrument_file is not None
        return self._instrument_file[1]

    def list_today(self) -> None:
        """On the first call of a new IST day: list that day's contracts and start trading the new ones."""
        now = self.clock.now()
        day = to_ist(now).date()
        if self._instrument_file is not None and self._instrument_file[0] == day:
            return
        listed = self._listed(now)
        new = self.market.list_more([i for i in listed if i.is_derivative])
        if new:
            logger.info(f"sim listed {len(new)} new contracts for {day}")
        self._instrument_file = (day, master_file_gz(listed))

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, *, rest_port: int | None = None, feed_port: int | None = None) -> None:
        s = self._settings
        await self.feeder.start(s.sim_host, s.sim_feed_port if feed_port is None else feed_port)
        sock = socket.socket(socket.AF_INET6 if ":" in s.sim_host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.sim_host, s.sim_port if rest_port is None else rest_port))
        sock.listen(128)
        sock.setblocking(False)
        self.rest_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self),
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            lifespan="off",
            ssl_certfile=str(self.tls.cert_path) if self.tls else None,
            ssl_keyfile=str(self.tls.key_path) if self.tls else None,
        )
        self._server = EmbeddedServer(config, name="sim:rest")
        await self._server.start(sockets=[sock])
        if s.sim_dns_port:
            self.dns = DnsResponder([*DEFAULT_NAMES, *s.sim_hostnames], _dns_answer_address(s.sim_host))
            await self.dns.start(s.sim_host if ":" not in s.sim_host else "127.0.0.1", s.sim_dns_port)
        if self.auto_tick:
            self._tasks.append(asyncio.create_task(self._tick_loop(), name="sim-ticks"))
        logger.info(
            f"simulator listening: REST {self.rest_url}, feeder port {self.feed_port}"
            + (f", DNS udp/{self.dns_port}" if self.dns else "")
            + (f", TLS CA {self.ca_path}" if self.tls else "")
            + f", {len(self.instruments)} instruments, seed {s.sim_seed}"
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # stops accepting now; awaited below, after the feeder
        await self.feeder.stop()
        if self.dns is not None:
            self.dns.stop()
        await cancel_and_wait([*self._tasks, *self.background], grace_s=5.0)
        self._tasks.clear()
        if self._server is not None:
            await self._server.stop(timeout_s=5.0)

    async def _tick_loop(self) -> None:
        interval = self._settings.sim_tick_interval_s
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.list_today()
            self.market.check_status()
            self.market.step()
            next_at += interval
            # Keep a steady rate; after a stall, skip the missed intervals instead of bursting.
            next_at = max(next_at, loop.time())
            await asyncio.sleep(next_at - loop.time())

    # --- control -------------------------------------------------------------------------------
    async def inject(
        self,
        kind: FaultKind,
        duration_s: float,
        *,
        code: int = 1000,
        ratio: float | None = None,
        delay_s: float | None = None,
        message: str | None = None,
        orders: int = 0,
    ) -> None:
        """Start a fault (see `POST /sim/faults`); `ratio` (partial_fill), `delay_s` (slow_fill: how long orders
        rest open; reply_delay: how long an order's answer is held) and `message` (reject) shape the order faults;
        `orders` limits partial_fill to the window's first N orders."""
        logger.warning(f"sim fault injected: {kind} for {duration_s}s")
        if ratio is not None:
            self.faults.fill_ratio = ratio
        if delay_s is not None and kind == "slow_fill":
            self.faults.fill_delay_s = delay_s
        if message is not None:
            self.faults.reject_message = message
        if kind == "partial_fill":
            self.faults.limit(kind, orders)
        if kind == "drop":
            self.faults.start(kind, duration_s)
            await self.feeder.drop(duration_s)
        elif kind == "close":
            self.faults.close_code = code
            self.faults.start(kind, duration_s)
            await self.feeder.close_all(code)
        elif kind == "reply_delay":
            self.faults.release_replies()  # answers held by an earlier window go now
            self.faults.reply_delay_s = delay_s or 0.0
            self.faults.start(kind, duration_s)
        else:
            self.faults.start(kind, duration_s)

    def reset(self) -> None:
        """Prices back to the seed's start, no pins, faults, orders, GTTs or positions."""
        self.market.reset()
        self.faults.clear()
        self.orders.reset()
        self.gtt.reset()
        self.blocked_order_calls = 0
        self.feeder.send_market_info()

    def state(self) -> dict[str, Any]:
        """What `/sim/state` shows."""
        extra = range(self._extra_from, self._extra_from + self._settings.sim_extra_instruments)  # benchmark rows
        prices = {
            inst.trading_symbol: self.market.quotes[i].ltp / 100
            for i, inst in enumerate(self.instruments)
            if i not in extra
        }
        return {
            "rest_url": self.rest_url,
            "feed_port": self.feed_port,
            "dns_port": self.dns_port,
            "tls_ca_path": str(self.ca_path) if self.ca_path else None,
            "instruments": len(self.instruments),
            "seed": self._settings.sim_seed,
            "steps": self.market.steps,
            "segment_status": self.market.segment_status(),
            "pinned": sorted(self.instruments[i].trading_symbol for i in self.market.pinned),
            "halted": sorted(self.instruments[i].trading_symbol for i in self.market.halted),
            "faults": self.faults.snapshot(),
            "fault_counts": self.faults.counts,
            "connections": self.feeder.state(),
            "handshakes_accepted": self.feeder.accepted,
            "handshakes_refused": self.feeder.handshakes_refused,
            "orders": len(self.orders.orders),
            "gtts_live": sum(1 for g in self.gtt.gtts.values() if g.live),
            "gtt_calls": self.gtt.calls,
            "blocked_order_calls": self.blocked_order_calls,
            "positions": self.orders.position_rows(),
            "prices": prices,
        }


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _dns_answer_address(host: str) -> str:
    return host if host.count(".") == 3 and host != "0.0.0.0" else "127.0.0.1"


@contextlib.asynccontextmanager
async def running_simulator(
    settings: Settings,
    *,
    clock: Clock | None = None,
    auto_tick: bool = True,
    rest_port: int = 0,
    feed_port: int = 0,
) -> AsyncIterator[Simulator]:
    """Start a simulator in this event loop (free ports by default) and stop it on exit."""
    sim = Simulator(settings, clock, auto_tick=auto_tick)
    await sim.start(rest_port=rest_port, feed_port=feed_port)
    try:
        yield sim
    finally:
        await sim.stop()
