"""Where a process spends its time: a short py-spy sample, summarised as self and inclusive shares.

py-spy is a dev dependency (it attaches to a running process by pid; root or ptrace rights needed).
Without it the report says so instead of guessing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

# Inclusive buckets that explain the feed's and the monitor's hot path.
BUCKETS = {
    "protobuf decode": ("decode (services/feed/decode.py",),
    "redis-py pack_command": ("pack_command",),
    "redis-py other": ("redis/",),
    "websockets receive": ("websockets/",),
    "write_frame (library)": ("write_frame",),
    "json": ("json/",),
    "monitor sweep": ("sweep_once",),
    "monitor tick notice": ("on_notice",),
    "pydantic": ("pydantic",),
    "logging (loguru)": ("loguru/",),
    "asyncio loop": ("asyncio/base_events.py",),
}


def sample(pid: int, duration_s: float, rate_hz: int = 200) -> dict[str, Any]:
    """Sample `pid` for `duration_s`; top self-time functions and bucket shares, or {"skipped": why}."""
    # The venv's own py-spy first: `make bench` runs .venv/bin/python without the venv on PATH.
    binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if binary is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        proc = subprocess.run(
            [
                binary,
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(duration_s)),
                "-r",
                str(rate_hz),
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=duration_s + 30,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            return {"skipped": f"py-spy failed: {(proc.stderr or proc.stdout).strip()[-200:]}"}
        lines = out.read_text(encoding="utf-8", errors="replace").splitlines()
    self_time: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_time[frames[-1]] += count
        for bucket, needles in BUCKETS.items():
            if any(n in stack for n in needles):
                buckets[bucket] += count
    if not total:
        return {"skipped": "py-spy collected no samples"}
    return {
        "samples": total,
        "top_self": [{"function": f, "share_pct": round(100 * c / total, 1)} for f, c in self_time.most_common(8)],
        "inclusive_pct": {b: round(100 * c / total, 1) for b, c in buckets.most_common()},
    }
