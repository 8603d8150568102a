"""Frames decoded per second: our decoder (`services.feed.decode`), and the official Upstox SDK as a peer.

The SDK (`upstox-python-sdk`) goes into a throwaway venv under ~/.cache/guard-bench (never into the project);
its streamer decodes each message with `FeedResponse.FromString` then `json_format.MessageToDict`, which is
what we time there. The peer figure is optional: no network, no SDK, no figure (the report says why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.frames import live_frames
from libs.common.instruments import Instrument

SDK_VENV = Path(os.environ.get("BENCH_SDK_VENV", Path.home() / ".cache" / "guard-bench" / "upstox-venv"))

# Runs inside the SDK's venv: the SDK's own generated module and its streamer's decode step.
_SDK_SCRIPT = """
import json, sys, time
from google.protobuf import json_format
from upstox_client.feeder.proto import MarketDataFeedV3_pb2 as sdk_pb
from importlib.metadata import version
data = open(sys.argv[1], "rb").read()
frames, pos = [], 0
while pos < len(data):
    n = int.from_bytes(data[pos:pos + 4], "big"); frames.append(data[pos + 4:pos + 4 + n]); pos += 4 + n
duration = float(sys.argv[2]); ticks = 0; count = 0
t0 = time.perf_counter(); deadline = t0 + duration
while time.perf_counter() < deadline:
    for f in frames:
        d = json_format.MessageToDict(sdk_pb.FeedResponse.FromString(f))
        ticks += len(d.get("feeds", {})); count += 1
wall = time.perf_counter() - t0
print(json.dumps({"frames_per_s": round(count / wall), "ticks_per_s": round(ticks / wall),
                  "sdk_version": version("upstox-python-sdk")}))
"""


def ours(instruments: list[Instrument], duration_s: float) -> dict[str, Any]:
    """Our decoder on 100-tick frames (protobuf parse + Tick objects), single thread."""
    from services.feed.decode import decode

    frames = live_frames(instruments, 100, 50)
    symbol_of = {i.instrument_key: i.trading_symbol for i in instruments}
    ticks = 0
    count = 0
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    while time.perf_counter() < deadline:
        for f in frames:
            ticks += len(decode(f, symbol_of).ticks)
            count += 1
    wall = time.perf_counter() - t0
    return {"frames_per_s": round(count / wall), "ticks_per_s": round(ticks / wall)}


def _sdk_python(install_timeout_s: float) -> tuple[Path | None, str]:
    python = SDK_VENV / "bin" / "python"
    probe = [str(python), "-c", "import upstox_client.feeder.proto.MarketDataFeedV3_pb2"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python, ""
    if os.environ.get("BENCH_SDK", "1") == "0":
        return None, "skipped (BENCH_SDK=0)"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(SDK_VENV)], check=True, capture_output=True, timeout=60)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "upstox-python-sdk"],
            check=True,
            capture_output=True,
            timeout=install_timeout_s,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install upstox-python-sdk in a throwaway venv ({type(exc).__name__})"
    return python, ""


def sdk(instruments: list[Instrument], duration_s: float, install_timeout_s: float = 180) -> dict[str, Any]:
    """The official SDK's decode rate on the same frames, or {"skipped": reason}."""
    python, why = _sdk_python(install_timeout_s)
    if python is None:
        return {"skipped": why}
    frames = live_frames(instruments, 100, 50)
    with tempfile.NamedTemporaryFile(suffix=".frames", delete=False) as f:
        for frame in frames:
            f.write(len(frame).to_bytes(4, "big") + frame)
        path = f.name
    try:
        proc = subprocess.run(
            [str(python), "-c", _SDK_SCRIPT, path, str(duration_s)],
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
            check=False,
        )
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        return {"skipped": f"SDK decode failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return dict(json.loads(proc.stdout))
