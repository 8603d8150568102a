"""A TCP proxy in front of the simulator's order endpoint that can hold replies, so a test knows an order
reached the broker and can keep its sender waiting for the answer (an order "in flight", deterministically).

`order_seen` is set once a whole order request (headers and body) has been passed on: httpx writes the two
separately, and a sender frozen between them has sent no order yet.

    async with OrderProxy(sim_port) as proxy:          # UPSTOX_ORDER_BASE=proxy.url for the services
        proxy.hold()                                   # replies are held from now on
        await proxy.order_seen.wait()                  # an order request went through to the simulator
        proxy.release()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class OrderProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._released = asyncio.Event()
        self._released.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.order_seen = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """Hold every reply from the simulator until `release()`; forget orders seen so far."""
        self._released.clear()
        self.order_seen.clear()

    def release(self) -> None:
        self._released.set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        up = asyncio.create_task(self._pipe(client_r, server_w, requests=True))
        down = asyncio.create_task(self._pipe(server_r, client_w, requests=False))
        self._tasks |= {up, down}
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()
            self._tasks -= {up, down}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, requests: bool) -> None:
        sent = b""  # the request bytes passed on since the last whole request
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not requests:
                    await self._released.wait()
                writer.write(data)
                await writer.drain()
                if requests:
                    sent += data
                    while (whole := _whole_request(sent)) is not None:
                        if b"/v3/order/place" in sent[:whole]:
                            self.order_seen.set()
                        sent = sent[whole:]


def _whole_request(data: bytes) -> int | None:
    """The length of the first complete HTTP request in `data` (headers and Content-Length body), None if
    it has not all arrived."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    end = len(head) + len(sep) + length
    return end if len(data) >= end else None
