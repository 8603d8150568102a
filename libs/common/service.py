"""Task lifecycle, the one way for every service: the process (`run_service`), its loops (`supervise`), stopping
tasks for sure (`cancel_and_wait`) and uvicorn inside a service (`EmbeddedServer`).

- `run_service(name, main)` is each `python -m services.X`: `--check`, settings, logging, signals, exit code.
- `supervise(service, loops, ...)` is what `main` runs: the service's heartbeat (started here and nowhere else)
  and its named loops, each restarted after a failure with `LOOP_RESTART` backoff, until cancelled.

One failure policy, restart the failed loop in the process, because it protects money better than ending the
process: the other loops go on (the monitor's 1 s sweep keeps checking SL/TP while its tick listener restarts,
the feed keeps its link while its status writer restarts), closes in flight are not cut short, and it does not
depend on an outer supervisor being there (`python -m services.monitor` run by hand has none). Each restart is
logged with its error; the backoff keeps a loop that fails at once from spinning. A configuration error
(`ConfigError`, a SystemExit) is not retried: it ends the process with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import uvicorn
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.backoff import Backoff
from libs.common.clock import Clock
from libs.common.heartbeat import beat_forever, check
from libs.common.logging import setup_logging
from libs.common.loop import loop_factory
from libs.common.metrics import set_service
from libs.common.settings import ConfigError, Settings

Loop = Callable[[], Awaitable[None]]

# A failed loop restarts after about 1 s, then 2, 4, 5 s while it keeps failing at once (short: a loop down is a
# protection down, e.g. the feed's subscriptions after a Redis outage).
LOOP_RESTART = Backoff(base_s=1.0, cap_s=5.0, jitter=0.2)
_HEALTHY_AFTER_S = 60.0  # a loop that ran this long before failing starts again from the first delay
RECANCEL_EVERY_S = 0.5
_service_process: ContextVar[bool] = ContextVar("service_process", default=False)  # set by run_service


# --- the process -------------------------------------------------------------------------------------------


def run_service(
    name: str,
    main: Callable[[Settings], Awaitable[None]],
    *,
    description: str,
    argv: list[str] | None = None,
    epilog: str | None = None,
    settings_model: type[Settings] = Settings,
) -> int:
    """Parse `--check`, load settings (`settings_model`: the simulator has its own), set up logging and run
    `main(settings)` until SIGTERM/SIGINT.

    Returns the process exit code: 0 on a clean stop, 2 on a configuration error.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="exit 0 if this service's heartbeat is fresh")
    args = parser.parse_args(argv)
    try:
        settings = settings_model.load()
    except ConfigError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    if args.check:
        return check(name, settings)
    setup_logging(name, settings)
    set_service(name)
    _service_process.set(True)  # before the runner copies the context: `supervise` freezes the start-up heap
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
            runner.run(_until_signal(name, main, settings))
    except ConfigError as exc:
        logger.error(str(exc.code))
        return 2
    return 0


def freeze_startup_heap() -> int:
    """Once a service has started: collect, then move every object alive now (imported modules, settings, the
    instrument list, the api's app and routes: ~100k objects) into the collector's permanent generation, and
    return how many are frozen in all. A full collection would otherwise walk them again and again with the
    event loop stopped: 50-90 ms, and every tick and close in flight waits. Objects made later are collected as
    before. `supervise` calls it in a service process (`run_service`), never in a test's process, whose garbage
    alive at that moment would never be collected."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _until_signal(name: str, main: Callable[[Settings], Awaitable[None]], settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main(settings))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info(f"{name} started")
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await cancel_and_wait([task], grace_s=RECANCEL_EVERY_S, patience_s=None)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
    logger.info(f"{name} stopped")


# --- the service's loops -----------------------------------------------------------------------------------


async def supervise(
    service: str,
    loops: Mapping[str, Loop],
    *,
    redis: Redis,
    settings: Settings,
    clock: Clock,
    beats_for_service: Callable[[], bool] | None = None,
) -> None:
    """Beat for `service` and run `loops` (name -> a coroutine function that runs forever) until cancelled.

    A loop that fails, or ends, is logged and restarted after `LOOP_RESTART` backoff; a `ConfigError` (a SystemExit)
    ends the process.
    On the way out every loop is cancelled with `cancel_and_wait`. `beats_for_service` says at each beat whether
    this instance also beats for the service as a whole (the feed: only its leader); default always.
    """
    if _service_process.get():
        logger.debug(f"{service}: {freeze_startup_heap()} start-up objects kept out of the collector's full passes")
    specs: dict[str, Loop] = {
        f"{service}:heartbeat": lambda: beat_forever(redis, service, settings, clock, for_service=beats_for_service),
        **{f"{service}:{name}": loop for name, loop in loops.items()},
    }
    tasks = [asyncio.create_task(_keep_running(name, loop, clock), name=name) for name, loop in specs.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        next(iter(done)).result()  # kept running: only a BaseException ends one, raise it
    finally:
        await cancel_and_wait(tasks)


async def _keep_running(name: str, loop: Loop, clock: Clock) -> None:
    failures = 0
    while True:
        started = clock.monotonic()
        try:
            await loop()
            problem = "ended unexpectedly"
            exc: BaseException | None = None
        except Exception as error:  # not BaseException: a cancel, or SystemExit (ConfigError), ends the process
            problem, exc = f"failed: {type(error).__name__}: {error}", error
        failures = 1 if clock.monotonic() - started >= _HEALTHY_AFTER_S else failures + 1
        delay_s = LOOP_RESTART.compute(failures)
        message = f"Loop {name} {problem}; restarting it in {delay_s:.1f} s"
        if isinstance(exc, RedisError | OSError):
            logger.warning(message)  # an outage, reported by the loops that need Redis; no traceback
        else:
            logger.opt(exception=exc).error(message)
        await clock.sleep(delay_s)


# --- stopping tasks for sure -------------------------------------------------------------------------------


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, grace_s: float = 2.0, patience_s: float | None = 10.0
) -> None:
    """Cancel `tasks` and wait until each has ended, re-cancelling the ones still running after `grace_s`.

    A cancellation can be lost on Python 3.11 when it lands while a library is finishing an await of its own
    (asyncio.wait_for inside redis-py, as a reply arrives), and one cancel would then leave the task running.
    After `patience_s` (None: never) the stragglers are logged and left. If the caller is cancelled meanwhile
    (a stop that nests: the api's lifespan stops `supervise`, which stops its loops) it still waits for its tasks
    to end, then raises CancelledError: no task outlives the one that was stopping it.
    """
    pending: set[asyncio.Task[Any]] = {t for t in tasks if not t.done()}
    if not pending:
        return
    loop = asyncio.get_running_loop()
    deadline = None if patience_s is None else loop.time() + patience_s
    interrupted = False
    wait_s = grace_s
    while pending:
        if deadline is not None and loop.time() > deadline:
            names = ", ".join(sorted(t.get_name() for t in pending))
            logger.error(f"Tasks still running {patience_s} s after cancel: {names}")
            break
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=wait_s)
        except asyncio.CancelledError:
            interrupted = True
        wait_s = RECANCEL_EVERY_S
    if interrupted:
        raise asyncio.CancelledError


# --- uvicorn inside a service ------------------------------------------------------------------------------


class EmbeddedServer(uvicorn.Server):
    """uvicorn run as one task of a service: no signal handlers of its own (`run_service` owns SIGTERM/SIGINT).

    `await start()` returns once it listens; `await stop()` lets it finish in-flight requests and run the app's
    lifespan shutdown.
    """

    def __init__(self, config: uvicorn.Config, *, name: str) -> None:
        super().__init__(config)
        self.name = name
        self._serving: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn calls sys.exit() when it cannot listen: inside a task that SystemExit would escape the event loop
        # past every `finally`. It ends the task instead, and start() raises it in the caller.
        with contextlib.suppress(SystemExit):
            await super().serve(sockets=sockets)

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve in a task named after the server; once it listens return, else raise SystemExit (or its error)."""
        serving = self._serving = asyncio.create_task(self.serve(sockets=sockets), name=self.name)
        while not self.started:
            if serving.done():
                serving.result()
                raise SystemExit(f"{self.name} could not listen (see the error above)")
            await asyncio.sleep(0.01)

    async def serve_until_cancelled(self, *, on_stop: Callable[[], None] | None = None) -> None:
        """Wait while it serves; when cancelled (SIGTERM), call `on_stop` and stop gracefully, then end cancelled."""
        assert self._serving is not None, "start() first"
        try:
            await asyncio.shield(self._serving)
        except asyncio.CancelledError:
            if on_stop is not None:
                on_stop()
            await self.stop()
            raise

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting, finish in-flight requests; after `timeout_s` (None: no limit) cancel what is left."""
        self.should_exit = True
        serving = self._serving
        if serving is None:
            return
        # asyncio.wait, not await: a second cancel of ours (cancel_and_wait) must not cut the shutdown short.
        done, _ = await asyncio.wait({serving}, timeout=timeout_s)
        if not done:
            await cancel_and_wait([serving])
        elif not serving.cancelled():
            serving.result()
