"""Tick -> Redis: how long a tick takes from the WebSocket to Redis at a steady 10,000 ticks/s.

This process is both ends. It serves Upstox's authorize endpoint and a WebSocket (like `bench.replay`) that
sends 100 frames/s of 100 ltpc ticks to a real feed process, and it listens on the `ticks` channel. Each
frame carries one sentinel tick whose price encodes the frame's number, so the notice the feed publishes
right after its script wrote the frame tells which frame landed; latency = notice received - frame sent, on
one clock (this includes pub/sub delivery, so it slightly overstates the write itself). Frames the feed
merged into one write show only their newest sentinel and are counted as `merged`.
"""

from __future__ import annotations

import asyncio
import json
import time
from http import HTTPStatus
from typing import Any

from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench.env import Services, percentiles
from bench.frames import extra_for, live_frames, market_info_frame, watchlist_instruments
from libs.common import keys
from libs.common.price_cache import parse_tick_notice
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from tests.helpers import free_port

TARGET_P99_MS = 5.0
_AUTHORIZE = "/v3/feed/market-data-feed/authorize"
_BASE_PRICE = 1000.0


def _sentinel(key: str, n: int) -> bytes:
    """A FeedResponse holding only the sentinel tick; appended to a frame's bytes, protobuf merges the maps."""
    msg = pb.FeedResponse()
    msg.feeds[key].ltpc.ltp = _BASE_PRICE + n / 100
    return msg.SerializeToString()


async def _measure(
    redis_url: str, port: int, services: Services, env: dict[str, str], seconds: float
) -> dict[str, Any]:
    instruments = watchlist_instruments(5000)
    sentinel = instruments[0]
    frames = live_frames(instruments[1:], 99, 50)
    info = market_info_frame()
    sent: dict[int, float] = {}
    all_sent = asyncio.Event()
    landed: list[float] = []
    merged = 0

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith(_AUTHORIZE):
            return None
        body = json.dumps({"status": "success", "data": {"authorized_redirect_uri": f"ws://127.0.0.1:{port}/f"}})
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(HTTPStatus.OK.value, "OK", headers, body.encode())

    async def handler(ws: ServerConnection) -> None:
        await ws.send(info)
        try:
            await ws.recv()  # the subscription request
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(int(seconds * 100)):
                await asyncio.sleep(max(0.0, start + n / 100 - loop.time()))  # 100 frames/s, no drift
                sent[n] = time.perf_counter()
                await ws.send(frames[n % len(frames)] + _sentinel(sentinel.instrument_key, n))
            all_sent.set()
        except ConnectionClosed:
            return

    redis = Redis.from_url(redis_url, decode_responses=True)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.TICKS_CHANNEL)

    async def listen() -> None:
        nonlocal merged
        last = -1
        async for message in pubsub.listen():
            now = time.perf_counter()
            _, prices = parse_tick_notice(message["data"])
            price = prices.get(sentinel.trading_symbol)
            if price is None:
                continue
            n = round((float(price) - _BASE_PRICE) * 100)
            if n in sent and n > last:
                merged += n - last - 1 if last >= 0 else 0
                last = n
                landed.append((now - sent[n]) * 1000)

    reader = asyncio.create_task(listen())
    try:
        async with serve(handler, "127.0.0.1", port, process_request=process_request, compression=None):
            services.start("feed", env)
            await asyncio.to_thread(services.wait_check, "feed", env)
            await asyncio.wait_for(all_sent.wait(), seconds + 30)
            await asyncio.sleep(0.5)  # the last frames land
    finally:
        services.stop("feed")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
    steady = landed[100:]  # past the connect and the first second
    return {
        "ticks_per_s": 10_000,
        "frames_sent": len(sent),
        "frames_measured": len(steady),
        "merged": merged,
        **percentiles(steady, 50, 95, 99),
        "max": round(max(steady, default=0.0), 3),
    }


def run(services: Services, redis_url: str, *, seconds: float) -> dict[str, Any]:
    """Tick -> Redis latency (ms) of one feed process at 10,000 ticks/s in 100-tick frames."""
    port = free_port()
    env = services.base_env(SIM_PORT=str(port), SIM_EXTRA_INSTRUMENTS=str(extra_for(5000)), FEED_SILENCE_TIMEOUT_S="30")
    return asyncio.run(_measure(redis_url, port, services, env, seconds))
