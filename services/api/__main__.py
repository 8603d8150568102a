"""`python -m services.api`: serve the api with uvicorn on API_HOST:API_PORT (`--check`: heartbeat fresh?)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator

import uvicorn
from loguru import logger
from sse_starlette.sse import AppStatus

from libs.common.service import run_service
from libs.common.settings import Settings
from services.api import cli
from services.api.app import create_app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: run_service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main(settings: Settings) -> None:
    app = create_app(settings)  # raises ConfigError (exit 2) beyond loopback without API_KEY
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_config=None, access_log=False, lifespan="on"
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(), name="api-uvicorn")
    logger.info(f"api listening on http://{settings.api_host}:{settings.api_port} (docs at /docs)")
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        # SIGTERM: let uvicorn finish in-flight requests and run the lifespan's shutdown.
        server.should_exit = True
        AppStatus.should_exit = True  # end the dashboard's event streams first: a clean stop, no cancelled sends
        await serving
        raise
    if not server.started:
        raise SystemExit(f"api could not listen on {settings.api_host}:{settings.api_port}")


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in cli.COMMANDS:  # `token set`, `login`: a new access token
        sys.exit(cli.main(sys.argv[1:]))
    sys.exit(
        run_service(
            "api",
            main,
            description="Connection health, emergency close, status and positions over HTTP.",
            epilog="A new access token for every service, no restart:\n"
            "  python -m services.api token set   read it from stdin (never an argument)\n"
            "  python -m services.api login       Upstox's OAuth dialog, caught on UPSTOX_REDIRECT_URI",
        )
    )
