"""`python -m services.feed` (add `--check` for the healthcheck exit code)."""

from __future__ import annotations

import sys

from libs.common.service import run_service
from services.feed.service import main

if __name__ == "__main__":
    sys.exit(
        run_service(
            "feed",
            main,
            description="Hold the Upstox market-data WebSocket and write every tick to the Redis price cache.",
        )
    )
