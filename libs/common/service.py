"""The thin `main()` every service shares: settings, logging, `--check`, signals, clean exit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from loguru import logger

from libs.common.heartbeat import check
from libs.common.logging import setup_logging
from libs.common.loop import loop_factory
from libs.common.metrics import set_service
from libs.common.settings import ConfigError, Settings, load_settings


def run_service(
    name: str,
    main: Callable[[Settings], Awaitable[None]],
    *,
    description: str,
    argv: list[str] | None = None,
    epilog: str | None = None,
) -> int:
    """Parse `--check`, load settings, set up logging and run `main(settings)` until SIGTERM/SIGINT.

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
        settings = load_settings()
    except ConfigError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    if args.check:
        return check(name, settings)
    setup_logging(name, settings)
    set_service(name)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
            runner.run(_supervise(name, main, settings))
    except ConfigError as exc:
        logger.error(str(exc.code))
        return 2
    return 0


async def _supervise(name: str, main: Callable[[Settings], Awaitable[None]], settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main(settings))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info(f"{name} started")
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    # Cancel until it ends: on Python 3.11 asyncio.wait_for (used inside redis-py) can swallow a cancel
    # that lands just as a reply arrives, and one cancel would then leave the service running.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
    logger.info(f"{name} stopped")
