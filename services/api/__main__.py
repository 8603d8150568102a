"""`python -m services.api`: serve the api with uvicorn on API_HOST:API_PORT (`--check`: heartbeat fresh?)."""

from __future__ import annotations

import sys

import uvicorn
from loguru import logger

from libs.common.service import run_service
from libs.common.settings import Settings
from services.api.app import create_app


async def main(settings: Settings) -> None:
    app = create_app(settings)  # raises ConfigError (exit 2) beyond loopback without API_KEY
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_config=None, access_log=False, lifespan="on"
    )
    logger.info(f"api listening on http://{settings.api_host}:{settings.api_port} (docs at /docs)")
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    sys.exit(
        run_service("api", main, description="Connection health, emergency close, status and positions over HTTP.")
    )
