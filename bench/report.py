"""The headline figures (`summary`, also written at the top level of latest.json) and the Markdown report."""

from __future__ import annotations

from typing import Any


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The keys the issue asks for (None = not measured in this run; see `errors`)."""
    feed = _get(r, "ingest", "replay_5000", "ticks_per_s")
    ceiling_ticks = _get(r, "ceiling", "pipelined_redis_py", "ticks_per_s")
    bench_ticks = _get(r, "ceiling", "redis_benchmark", "ticks_per_s_equivalent")
    decision = _get(r, "decision", "1000") or {}
    health = _get(r, "health", "5000", "health") or {}
    to_redis = _get(r, "feed_latency") or {}
    return {
        "ingest_ticks_per_s": feed,
        "ingest_written_ticks_per_s": _get(r, "ingest", "replay_5000", "written_ticks_per_s"),
        "ingest_sim_ticks_per_s": _get(r, "ingest", "sim_5000", "ticks_per_s"),
        "ingest_feed_cpu_pct": _get(r, "ingest", "replay_5000", "cpu_pct", "feed"),
        "redis_ceiling_ops_per_s": _get(r, "ceiling", "pipelined_redis_py", "ops_per_s"),
        "redis_ceiling_ticks_per_s": ceiling_ticks,
        "redis_benchmark_hset_ops_per_s": _get(r, "ceiling", "redis_benchmark", "hset_ops_per_s"),
        "ingest_to_ceiling_ratio": round(feed / ceiling_ticks, 2) if feed and ceiling_ticks else None,
        "ingest_to_redis_benchmark_ratio": round(feed / bench_ticks, 2) if feed and bench_ticks else None,
        "tick_to_redis_ms": {k: to_redis[k] for k in ("p50", "p95", "p99") if k in to_redis} or None,
        "tick_to_decision_ms": {k: decision[k] for k in ("p50", "p95", "p99") if k in decision} or None,
        "health_ms": {k: health[k] for k in ("p50", "p99") if k in health} or None,
        "health_rps": health.get("rps"),
        "dead_feed_detect_s": _get(r, "recovery", "mute_detect_s"),
        "recovery_s": _get(r, "recovery", "recovery_s"),
        "backoff_delay_s": _get(r, "recovery", "backoff_delay_s"),
        "tick_to_decision_10k_ms": _pcts(_get(r, "decision", "10000")),
        "close_path_ms": _pcts(_get(r, "close_path")),
        "emergency_close_ms": _pcts(_get(r, "health", "5000", "emergency_close")),
        "blip_recovery_s": _get(r, "recovery", "blip_recovery_s"),
        "rss_mb": {
            name: value
            for name, value in (
                ("feed", _get(r, "ingest", "replay_5000", "feed_rss_mb")),
                ("monitor", _get(r, "decision", "10000", "monitor_rss_mb")),
                ("api", _get(r, "health", "5000", "api_rss_mb")),
            )
            if value is not None
        }
        or None,
        "ingest_reconnects": _get(r, "ingest", "replay_5000", "reconnects"),
    }


def _pcts(data: dict[str, Any] | None) -> dict[str, float] | None:
    """{p50, p95, p99} of a measurement, None when it was not measured."""
    if not data:
        return None
    return {k: data[k] for k in ("p50", "p95", "p99") if k in data} or None


def targets(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) rows (issue #21's targets); the verdict says by how much a miss misses."""
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: float | None, target: float, unit: str, higher_is_better: bool) -> None:
        if value is None:
            rows.append((name, "not measured", f"{target:g} {unit}", "MISSING"))
            return
        ok = value >= target if higher_is_better else value <= target
        if ok:
            verdict = "met"
        elif higher_is_better:
            verdict = f"MISSED by {target - value:,.2f} {unit} ({value / target:.0%} of target)"
        else:
            verdict = f"MISSED by {value - target:,.2f} {unit} ({value / target:.1f}x the target)"
        rows.append((name, f"{value:,.2f} {unit}".replace(".00 ", " "), f"{target:g} {unit}", verdict))

    def p99(key: str) -> float | None:
        return (s.get(key) or {}).get("p99")

    row("tick -> decision p99 (1,000 positions, 10,000 ticks/s)", p99("tick_to_decision_ms"), 2, "ms", False)
    row("tick -> decision p99 (10,000 positions, 10,000 ticks/s)", p99("tick_to_decision_10k_ms"), 3, "ms", False)
    row("tick -> Redis p99 (10,000 ticks/s)", p99("tick_to_redis_ms"), 2.5, "ms", False)
    row("health p99 (5,000 symbols)", p99("health_ms"), 4, "ms", False)
    row("ingest / redis-benchmark equivalent (5,000 symbols)", s["ingest_to_redis_benchmark_ratio"], 0.9, "x", True)
    row("ingest link drops at default ping settings", s["ingest_reconnects"], 0, "drops", False)
    row("fresh prices after a 1 s blip", s["blip_recovery_s"], 1, "s", False)
    row("decision -> close order on the wire p99", p99("close_path_ms"), 25, "ms", False)
    row("emergency close p99 (200 positions x 2 racing)", p99("emergency_close_ms"), 25, "ms", False)
    for service in ("feed", "monitor", "api"):
        row(f"resident memory, {service}", (s.get("rss_mb") or {}).get(service), 150, "MB", False)
    row("dead (mute) connection detected", s["dead_feed_detect_s"], 10, "s", False)
    if s["recovery_s"] is not None and s["backoff_delay_s"] is not None:
        row(
            "recovery after a longer drop (target: backoff delay + 1 s)",
            s["recovery_s"],
            s["backoff_delay_s"] + 1,
            "s",
            False,
        )
    else:
        row("recovery after a longer drop (target: backoff delay + 1 s)", None, 0, "s", False)
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _profile(title: str, prof: dict[str, Any] | None) -> str:
    if not prof:
        return ""
    if "skipped" in prof:
        return f"**{title}**: profile skipped ({prof['skipped']}).\n"
    inclusive = ", ".join(f"{k} {v}%" for k, v in prof["inclusive_pct"].items())
    top = "; ".join(f"`{t['function']}` {t['share_pct']}%" for t in prof["top_self"][:5])
    return f"**{title}** (py-spy, {prof['samples']} samples): inclusive {inclusive}. Top self time: {top}.\n"


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    m = r["machine"]
    out = [
        "# Benchmarks",
        "",
        f"{m['date']} · {m['nproc']} cores · {m['cpu_model']} · Python {m['python']} · Redis {m['redis']}"
        + f" · {'quick run' if r['quick'] else 'full run'} in {r.get('duration_s', '?')} s"
        + f" · load average at the start {m.get('loadavg_1m', '?')}",
        "",
        "## Targets",
        "",
        _table(["figure", "measured", "target", "verdict"], [list(t) for t in targets(s)]),
        "",
    ]
    ingest = r.get("ingest") or {}
    if ingest:
        rows = [
            [
                v["source"],
                _fmt(v["symbols"]),
                v.get("duration_s", "-"),
                _fmt(v["ticks_per_s"]),
                _fmt(v.get("written_ticks_per_s")),
                _fmt(v["frames_per_s"]),
                v["ticks_per_frame"],
                v["cpu_pct"]["feed"],
                v["cpu_pct"]["source"],
                v["cpu_pct"]["redis"],
                v.get("reconnects", "-"),
                _fmt(v.get("superseded_ticks")),
                v.get("feed_rss_mb", "-"),
            ]
            for v in ingest.values()
        ]
        out += [
            "## Ingest (feed process -> Redis, frames of ~100 ticks)",
            "",
            "`replay` = pre-encoded frames sent back to back (the feed's own capacity); `sim` = the simulator "
            "asked for 50,000 ticks/s (it shares the 2 cores with the feed). `ticks/s` = ingested: taken off the "
            "socket with their price in Redis, `written` (one write each) plus `superseded` (older ticks of a "
            "symbol left out while the decoder caught up: the newest tick of every symbol is written, so Redis "
            "holds what writing them all would have left). CPU in % of one core. `drops` = reconnects in the "
            "window, at the default ping settings (3 s): saturated, the feed's reader still drains the socket "
            "first, so pongs arrive on time. RSS = the feed's resident memory.",
            "",
            _table(
                [
                    "source",
                    "symbols",
                    "window s",
                    "ticks/s",
                    "written/s",
                    "frames/s",
                    "ticks/frame",
                    "feed CPU%",
                    "src CPU%",
                    "redis CPU%",
                    "drops",
                    "superseded",
                    "RSS MB",
                ],
                rows,
            ),
            "",
        ]
    ceiling = r.get("ceiling") or {}
    if ceiling:
        rb = ceiling.get("redis_benchmark") or {}
        out += [
            "## Redis ceiling (same run, same Redis)",
            "",
            _table(
                ["writer", "ticks/s", "Redis ops/s"],
                [
                    [
                        "minimal pipelined redis-py (HSET 5 fields + EXPIRE + ZADD, PUBLISH per 100)",
                        _fmt(ceiling["pipelined_redis_py"]["ticks_per_s"]),
                        _fmt(ceiling["pipelined_redis_py"]["ops_per_s"]),
                    ],
                    [
                        "`redis-benchmark -P 100` HSET 5 fields (ticks/s = ops / 3)",
                        _fmt(rb.get("ticks_per_s_equivalent")),
                        _fmt(rb.get("hset_ops_per_s")),
                    ],
                    ["`redis-benchmark -P 100` PUBLISH", "", _fmt(rb.get("publish_ops_per_s"))],
                    [
                        "`PriceCache.write_frame` in a loop (our write path, no decode)",
                        _fmt(ceiling["library_write_frame"]["ticks_per_s"]),
                        "",
                    ],
                ],
            ),
            "",
            f"Ratio ours / ceiling: feed {_fmt(s['ingest_ticks_per_s'])} ticks/s ingested vs pipelined redis-py "
            f"{_fmt(s['redis_ceiling_ticks_per_s'])} = **{_fmt(s['ingest_to_ceiling_ratio'])}**; "
            f"vs redis-benchmark equivalent = **{_fmt(s['ingest_to_redis_benchmark_ratio'])}** "
            f"(written alone: {_fmt(s['ingest_written_ticks_per_s'])} ticks/s).",
            "",
        ]
    dec = r.get("decode") or {}
    if dec:
        sdk = dec.get("upstox_sdk") or {}
        sdk_row = (
            [
                "official upstox-python-sdk " + sdk.get("sdk_version", ""),
                "FromString + MessageToDict",
                _fmt(sdk.get("frames_per_s")),
                _fmt(sdk.get("ticks_per_s")),
            ]
            if "skipped" not in sdk
            else ["official upstox-python-sdk", sdk.get("skipped"), "-", "-"]
        )
        out += [
            "## Decode rate (single thread, 100-tick ltpc frames)",
            "",
            _table(
                ["decoder", "what", "frames/s", "ticks/s"],
                [
                    [
                        "ours (`services.feed.decode`)",
                        "FromString + Tick objects",
                        _fmt(dec["ours"]["frames_per_s"]),
                        _fmt(dec["ours"]["ticks_per_s"]),
                    ],
                    sdk_row,
                ],
            ),
            "",
        ]
    to_redis = r.get("feed_latency") or {}
    if to_redis:
        out += [
            "## Tick -> Redis (one feed process, 10,000 ticks/s in 100-tick frames), ms",
            "",
            "From the frame sent on the WebSocket to the feed's notice received on `ticks` (published right after "
            "the frame's script wrote it), one clock; frames merged into one write are counted, not timed.",
            "",
            _table(
                ["frames sent", "measured", "merged", "p50", "p95", "p99", "max"],
                [
                    [
                        to_redis["frames_sent"],
                        to_redis["frames_measured"],
                        to_redis["merged"],
                        to_redis.get("p50"),
                        to_redis.get("p95"),
                        to_redis.get("p99"),
                        to_redis.get("max"),
                    ]
                ],
            ),
            "",
        ]
    decision = r.get("decision") or {}
    if decision:
        rows = [
            [
                _fmt(v["positions"]),
                _fmt(v["load_ticks_per_s"]),
                v["triggers"],
                v["missed"],
                v.get("p50"),
                v.get("p95"),
                v.get("p99"),
                round(v.get("max", 0), 1),
                (v.get("claim_ms") or {}).get("p50"),
                (v.get("claim_ms") or {}).get("p99"),
                v["monitor_cpu_pct"],
                v.get("monitor_rss_mb", "-"),
            ]
            for v in sorted(decision.values(), key=lambda v: v["positions"])
        ]
        out += [
            "## Tick -> decision, ms",
            "",
            "From the price written to Redis to the monitor's decision (its `[SL]` line, `decided_at` in the "
            "`closing` event); `claim` adds the atomic open -> closing claim in Redis that precedes the order.",
            "",
            _table(
                [
                    "positions",
                    "background ticks/s",
                    "triggers",
                    "missed",
                    "p50",
                    "p95",
                    "p99",
                    "max",
                    "claim p50",
                    "claim p99",
                    "monitor CPU %",
                    "monitor RSS MB",
                ],
                rows,
            ),
            "",
        ]
    health = r.get("health") or {}
    if health:
        rows = [
            [
                _fmt(v["symbols"]),
                v["health"]["cached_symbols_reported"],
                v["health"]["requests"],
                v["health"].get("p50"),
                v["health"].get("p95"),
                v["health"].get("p99"),
                v["health"]["rps"],
                v["api_cpu_pct"],
                v.get("api_rss_mb", "-"),
            ]
            for v in sorted(health.values(), key=lambda v: v["symbols"])
        ]
        out += [
            "## Connection health (GET, sequential for latency, 8 concurrent for requests/s), ms",
            "",
            _table(
                ["symbols", "cached reported", "requests", "p50", "p95", "p99", "req/s", "api CPU %", "api RSS MB"],
                rows,
            ),
            "",
        ]
        ec = _get(health, "5000", "emergency_close")
        if ec:
            out += [
                f"Emergency close under contention ({ec['positions']} positions, two racing requests each, "
                f"8 in flight): statuses {ec['status_counts']}, p50 {ec.get('p50')} ms, p95 {ec.get('p95')} ms, "
                f"p99 {ec.get('p99')} ms, {ec['closes_per_s']} closes/s ({ec['requests_per_s']} requests/s).",
                "",
            ]
    close = r.get("close_path") or {}
    if close:
        out += [
            "## Decision -> close order on the wire (simulator broker), ms",
            "",
            "From the monitor's decision (`decided_at` of its `closing` event) to the sell order reaching the "
            "simulator (`placed_at`), one close at a time, with the broker-position check and the safety net's GTT "
            "cancel in front of the order (`safety nets` = positions that had a live GTT to cancel).",
            "",
            _table(
                ["positions", "timed", "missed", "safety nets", "p50", "p95", "p99", "max"],
                [
                    [
                        close["positions"],
                        close["closes_timed"],
                        close["missed"],
                        close.get("safety_nets", "-"),
                        close.get("p50"),
                        close.get("p95"),
                        close.get("p99"),
                        close.get("max"),
                    ]
                ],
            ),
            "",
        ]
    rec = r.get("recovery") or {}
    if rec:
        out += [
            "## Dead feed and recovery (product defaults: silence 7 s, backoff 5-10 s with jitter)",
            "",
            f"Mute (socket open, no data) detected in **{_fmt(rec.get('mute_detect_s'))} s**; a dropped TCP "
            f"connection in {_fmt(rec.get('drop_detect_s'))} s. After a drop, fresh prices were in Redis "
            f"**{_fmt(rec.get('recovery_s'))} s** after the simulator accepted connections again, with a backoff "
            f"delay of {_fmt(rec.get('backoff_delay_s'))} s in force ({rec.get('retries_during_drop')} retries "
            f"announced; outage seen by Redis readers {_fmt(rec.get('outage_s'))} s). After a 1 s blip, fresh "
            f"prices **{_fmt(rec.get('blip_recovery_s'))} s** after the network returned "
            f"({rec.get('blip_attempts')} attempts announced).",
            "",
        ]
    profiles = [
        _profile("feed, replay at 5,000 symbols", _get(r, "ingest", "replay_5000", "profile")),
        _profile("monitor, 1,000 positions", _get(r, "decision", "1000", "profile")),
        _profile("api, health at 5,000 symbols", _get(r, "health", "5000", "profile")),
    ]
    if any(profiles):
        out += ["## Where the time goes", "", *[p for p in profiles if p], ""]
    if r["errors"]:
        out += ["## Not measured in this run", ""]
        out += [f"- {name}: {why}" for name, why in r["errors"].items()]
        out += [""]
    out += ["## Closing note", "", *closing_note(r), ""]
    return "\n".join(out)


# What the profiles of this code say about a miss (the measured figures stay above; this is the why).
WHY_MISSED = {
    "tick -> decision": (
        "the tick path decides on the notice's own price with no Redis round trip; its tail comes from sharing "
        "the monitor's one event loop with the sweep and the close tasks (see the monitor's profile)"
    ),
    "tick -> Redis": (
        "one script call per frame; the tail is the feed, Redis and this bench's listener sharing 2 cores"
    ),
    "health": (
        "one Redis round trip (a script) per request; the rest is uvicorn, FastAPI and this bench's Python HTTP "
        "client on the same 2 cores (see the api's profile)"
    ),
    "ingest": (
        "protobuf decoding and the per-tick work of the frame script in Redis (see the feed's profile); the "
        "feed and Redis each hold most of a core of the 2"
    ),
    "fresh prices after a 1 s blip": (
        "the reconnect after the blip waits for the attempt schedule (the first attempt goes at once; when it "
        "lands inside the blip, the next one waits for the guide's 5-10 s backoff)"
    ),
    "decision -> close order": (
        "the close path's broker calls (position check, GTT cancel, order) go through the client-side pacing "
        "under Upstox's limits, and the monitor's loop is shared with its sweep"
    ),
    "emergency close": "each close is a claim, a broker order and a journal write; 8 in flight share one api loop",
}


def closing_note(r: dict[str, Any]) -> list[str]:
    """One written reason per missed target, grounded in what this run measured."""
    s = r["summary"]
    notes: list[str] = []
    for name, measured, target, verdict in targets(s):
        if not verdict.startswith("MISSED"):
            continue
        why = next((text for prefix, text in WHY_MISSED.items() if name.startswith(prefix)), "see the profiles above")
        notes.append(f"- {name}: {measured} against {target}: {why}.")
    if not notes:
        notes.append("- Every target measured in this run was met.")
    if r["errors"]:
        notes.append("- Figures missing from this run are listed above; they are not estimated.")
    notes.append(
        "- The machine is shared: absolute numbers move by 2x between runs; compare ratios taken in the same run."
    )
    return notes
