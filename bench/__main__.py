"""`python -m bench` (`make bench`): every measurement in one run, then `bench/results/latest.{json,md}`.

Sections run one after the other on one private Redis so they do not compete with each other (the machine
is shared and noisy, so ratios measured in the same run are the figures to trust). A section that fails
is recorded with its error and the run goes on: a missing figure is reported as missing, never invented.
`BENCH_QUICK=1` shortens every window (about 2 minutes instead of about 5).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from bench import ceiling, close_path, decision, decode, feed_latency, health, ingest, recovery, report
from bench.env import Knobs, Services, elapsed_ms, machine, private_redis, service_ready
from bench.frames import watchlist_instruments
from libs.common.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def _section(results: dict[str, Any], name: str, fn: Callable[[], Any], *, needs: tuple[str, ...] = ()) -> None:
    missing = [s for s in needs if not service_ready(s)]
    if missing:
        results["errors"][name] = f"not measured: services/{', services/'.join(missing)} not available yet"
        print(f"== {name}: skipped ({results['errors'][name]})", flush=True)
        return
    # This process measures (it is the client of every section) and keeps what earlier sections gathered: a full
    # collection of that heap, stopping this process mid-measurement, was the bench's own pause, not the product's.
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    print(f"== {name} ... (bench heap: {gc.get_freeze_count():,} objects frozen, {elapsed_ms(t0):.0f} ms)", flush=True)
    t0 = time.monotonic()
    try:
        results[name] = fn()
    except Exception as exc:
        results["errors"][name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    print(f"   {name} done in {time.monotonic() - t0:.0f} s", flush=True)


def main() -> int:
    knobs = Knobs(quick=os.environ.get("BENCH_QUICK", "") not in ("", "0"))
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "quick": knobs.quick, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="guard-bench-") as tmp:
        workdir = Path(tmp)
        with private_redis(workdir) as server:
            url = server.url
            assert server.proc is not None
            redis_pid = server.proc.pid
            redis = SyncRedis.from_url(url, decode_responses=True)
            services = Services(url, workdir)
            settings = Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
            try:
                _section(
                    results,
                    "ceiling",
                    lambda: ceiling.measure(url, server.port, settings, knobs.s(5, 2), knobs.quick),
                )
                instruments = watchlist_instruments(5000)
                _section(
                    results,
                    "decode",
                    lambda: {
                        "ours": decode.ours(instruments, knobs.s(3, 1)),
                        "upstox_sdk": decode.sdk(instruments, knobs.s(3, 1)),
                    },
                )

                # Seconds per ingest run (full, quick): issue 21's target is 60 s of replay at 5,000 symbols.
                ingest_windows = {5000: {"replay": (60, 8), "sim": (30, 8)}, 500: {"replay": (8, 4), "sim": (8, 4)}}

                def ingest_all() -> dict[str, Any]:
                    out: dict[str, Any] = {}
                    for source in ("replay", "sim"):
                        for symbols in (5000, 500):
                            out[f"{source}_{symbols}"] = ingest.run(
                                services,
                                redis,
                                redis_pid,
                                source=source,
                                symbols=symbols,
                                duration_s=knobs.s(*ingest_windows[symbols][source]),
                                profile_s=knobs.s(5, 3) if (source, symbols) == ("replay", 5000) else 0.0,
                            )
                    return out

                _section(results, "ingest", ingest_all, needs=("feed", "sim"))
                _section(
                    results,
                    "feed_latency",
                    lambda: feed_latency.run(services, url, seconds=knobs.s(20, 8)),
                    needs=("feed",),
                )

                def decision_all() -> dict[str, Any]:
                    out: dict[str, Any] = {}
                    for positions, triggers in (
                        (1000, knobs.n(2000, 300)),
                        (100, knobs.n(500, 150)),
                        (10000, knobs.n(2000, 150)),  # as many as at 1,000: a p99 of 500 moved 2x between runs
                    ):
                        out[str(positions)] = decision.run(
                            services,
                            url,
                            positions=positions,
                            triggers=triggers,
                            load_ticks_per_s=10_000,
                            timeout_s=knobs.s(12 if positions == 100 else 25, 10),
                            profile_s=knobs.s(8, 4) if positions == 1000 else 0.0,
                        )
                    return out

                _section(results, "decision", decision_all, needs=("monitor",))
                _section(
                    results,
                    "close_path",
                    lambda: close_path.run(services, url, positions=knobs.n(100, 20)),
                    needs=("monitor", "sim"),
                )

                def health_all() -> dict[str, Any]:
                    return {
                        str(symbols): health.run(
                            services,
                            url,
                            symbols=symbols,
                            requests=knobs.n(1000, 200),
                            rps_window_s=knobs.s(5, 2),
                            positions=knobs.n(200, 50) if symbols == 5000 else 0,
                            profile_s=knobs.s(5, 2) if symbols == 5000 else 0.0,
                        )
                        for symbols in (5000, 500)
                    }

                _section(results, "health", health_all, needs=("api",))
                _section(
                    results,
                    "recovery",
                    lambda: recovery.run(services, redis, symbols=5000, drop_s=knobs.s(5, 3)),
                    needs=("feed", "sim"),
                )
            finally:
                services.stop_all()
                redis.close()
    results["duration_s"] = round(time.monotonic() - started)
    results["summary"] = report.summary(results)
    results.update(results["summary"])  # the keys at the top level of latest.json
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = report.markdown(results)
    (RESULTS / "latest.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
