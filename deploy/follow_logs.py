"""Follow every service's log under a folder, each line prefixed with its service (`make logs`)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TextIO

SERVICES = ("sim", "feed", "monitor", "api", "alerts")


def follow(folder: Path) -> None:
    handles: dict[str, TextIO] = {}
    width = max(len(s) for s in SERVICES)
    while True:
        for service in SERVICES:
            path = folder / f"{service}.log"
            if service not in handles and path.exists():
                handle = path.open(encoding="utf-8", errors="replace")
                handle.seek(0, 2)  # only what is written from now on
                handles[service] = handle
        idle = True
        for service, stream in handles.items():
            for line in stream:
                idle = False
                sys.stdout.write(f"{service:<{width}} | {line}")
        sys.stdout.flush()
        if idle:
            time.sleep(0.2)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        follow(Path(sys.argv[1] if len(sys.argv) > 1 else "logs"))
