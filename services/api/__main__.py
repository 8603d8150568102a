"""`python -m services.api`: serve the api with uvicorn on API_HOST:API_PORT (`--check`: heartbeat fresh?)."""

from __future__ import annotations

import sys

import uvicorn
from loguru import logger
from sse_starlette.sse import AppStatus

from libs.common.service import EmbeddedServer, run_service
from libs.common.settings import Settings
from services.api import cli
from services.api.app import create_app


async def main(settings: Settings) -> None:
    app = create_app(settings)  # raises ConfigError (exit 2) beyond loopback without API_KEY
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http="httptools",  # C parser (a dependency): h11, uvicorn's pure-Python fallback, costs more per request
    )
    server = EmbeddedServer(config, name="api:uvicorn")
    await server.start()  # SystemExit when it cannot listen
    logger.info(f"api listening on http://{settings.api_host}:{settings.api_port} (docs at /docs)")
    # SIGTERM: end the dashboard's event streams first (a clean stop, no cancelled sends), then let uvicorn finish
    # in-flight requests and run the lifespan's shutdown.
    await server.serve_until_cancelled(on_stop=_end_event_streams)


def _end_event_streams() -> None:
    AppStatus.should_exit = True


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
