"""A replay feeder: Upstox's authorize endpoint + a WebSocket that sends pre-encoded frames as fast as read.

`python -m bench.replay PORT SYMBOLS [TICKS_PER_FRAME]` listens on 127.0.0.1:PORT. Point the feed at it with
SIM_PORT=PORT (simulator mode): the feed authorizes with a plain HTTP GET (answered from `process_request`),
connects, subscribes, and then gets `live_feed` frames back to back. The frames are encoded before the
first connection, so this process costs little CPU and the feed's own capacity is what gets measured.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench.frames import live_frames, market_info_frame, watchlist_instruments

FEED_PATH = "/feed"
AUTHORIZE_PATH = "/v3/feed/market-data-feed/authorize"


def _json_response(body: dict[str, object]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(HTTPStatus.OK.value, "OK", headers, data)


async def run(port: int, symbols: int, ticks_per_frame: int) -> None:
    instruments = watchlist_instruments(symbols)
    frames = live_frames(instruments, ticks_per_frame, max(20, symbols // ticks_per_frame * 2))
    info = market_info_frame()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith(AUTHORIZE_PATH):
            uri = f"ws://127.0.0.1:{port}{FEED_PATH}?code=x"
            return _json_response({"status": "success", "data": {"authorized_redirect_uri": uri}})
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.send(info)
        try:
            await ws.recv()  # the subscription request
            while True:
                for frame in frames:
                    await ws.send(frame)  # waits while the client's buffers are full: paced by the reader
        except ConnectionClosed:
            return

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, process_request=process_request, max_size=2**22, compression=None):
        print(f"replay feeder on {port}: {len(instruments)} symbols, {len(frames)} frames", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 100))
