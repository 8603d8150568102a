"""A tiny DNS responder on UDP: A records for the Upstox host names, pointing at the simulator.

The feed's DNS-fallback tests ask it for `api.upstox.invalid` (which the system resolver never
resolves) on loopback. Configured names get an A record; AAAA and other types for them get an empty
NOERROR answer; any other name gets NXDOMAIN.
"""

from __future__ import annotations

import asyncio
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from loguru import logger

TTL_S = 30


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        answer = self.responder.answer(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


class DnsResponder:
    """Answers A queries for `names` with `address`; `queries` counts what it was asked."""

    def __init__(self, names: list[str], address: str) -> None:
        self.names = {n.lower().rstrip(".") for n in names}
        self.address = address
        self.queries = 0
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def answer(self, data: bytes) -> bytes | None:
        """The wire answer to one query datagram, or None for junk."""
        try:
            query = dns.message.from_wire(data)
        except Exception:  # any malformed datagram is dropped, like a real server would
            logger.debug("sim dns: malformed query dropped")
            return None
        self.queries += 1
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text(omit_final_dot=True).lower()
            if name not in self.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
                continue
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(question.name, TTL_S, "IN", "A", self.address))
        return response.to_wire()
