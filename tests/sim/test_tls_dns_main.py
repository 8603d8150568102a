"""TLS with a start-up CA, the DNS responder, and `python -m services.sim` as a real process."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from libs.common.clock import SystemClock
from libs.common.heartbeat import heartbeat_age_s
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from libs.common.service import cancel_and_wait
from libs.common.settings import Settings
from services.sim import __main__ as sim_main
from services.sim.server import running_simulator
from tests.helpers import eventually, free_port, sealed_child
from tests.sim.conftest import TOKEN, recv_frame, sim_settings

pytestmark = pytest.mark.integration


async def _https_get(port: int, host_name: str, path: str, ctx: ssl.SSLContext) -> dict[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host_name)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host_name}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(body))


async def test_tls_by_host_name_on_a_loopback_address_and_dns_answers(settings: Settings, tmp_path: Path) -> None:
    cfg = sim_settings(
        settings,
        sim_tls=True,
        sim_tls_ca_path=str(tmp_path / "sim-ca.pem"),
        sim_dns_port=free_port(),
        sim_hostnames=["feed.example.test"],
    )
    async with running_simulator(cfg) as sim:
        assert sim.ca_path == tmp_path / "sim-ca.pem" and sim.rest_url.startswith("https://")
        for name in ("api.upstox.invalid", "api.upstox.com", "api-hft.upstox.com", "feed.example.test"):
            answer = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", 2, port=sim.dns_port)
            assert [r.address for r in answer.answer[0]] == ["127.0.0.1"], name
        unknown = await dns.asyncquery.udp(
            dns.message.make_query("example.org", "A"), "127.0.0.1", 2, port=sim.dns_port
        )
        assert unknown.rcode() == dns.rcode.NXDOMAIN

        ctx = ssl.create_default_context(cafile=str(sim.ca_path))
        body = await _https_get(sim.rest_port, "api.upstox.invalid", "/v3/feed/market-data-feed/authorize", ctx)
        uri = str(body["data"]["authorized_redirect_uri"])  # type: ignore[index]
        assert uri.startswith(f"wss://api.upstox.invalid:{sim.feed_port}/market-data-feeder/")
        async with connect(uri, ssl=ctx, host="127.0.0.1", port=sim.feed_port) as ws:
            assert (await recv_frame(ws))[1].type == pb.market_info
        with pytest.raises(ssl.SSLCertVerificationError):
            await _https_get(sim.rest_port, "wrong.example.org", "/v2/user/profile", ctx)
        with pytest.raises(ssl.SSLCertVerificationError):
            await _https_get(sim.rest_port, "api.upstox.com", "/v2/user/profile", ssl.create_default_context())


def test_help_lists_the_control_api(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "services.sim", "--help"]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=30, **sealed_child(tmp_path)
    ).stdout
    for endpoint in ("/sim/price", "/sim/faults", "/sim/orders", "/sim/state", "/sim/reset", "/sim/market"):
        assert endpoint in out
    for kind in ("drop", "close", "mute", "auth", "rest_down"):
        assert kind in out


async def test_heartbeat_is_beaten_when_redis_is_reachable(settings: Settings, redis: Redis) -> None:
    serving = settings.model_copy(update={"sim_port": free_port(), "sim_feed_port": free_port()})
    task = asyncio.create_task(sim_main.main(serving))
    try:
        await eventually(lambda: heartbeat_age_s(redis, "sim", SystemClock()), timeout_s=5)
    finally:
        await cancel_and_wait([task])  # re-cancels: a cancel can be swallowed inside redis-py on Python 3.11


async def test_process_serves_without_redis_and_stops_cleanly(tmp_path: Path) -> None:
    rest_port, feed_port = free_port(), free_port()
    place = sealed_child(
        tmp_path,
        SIM_PORT=str(rest_port),
        SIM_FEED_PORT=str(feed_port),
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        REDIS_CONNECT_TIMEOUT_S="0.2",
        REDIS_RETRIES="0",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.sim", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **place
    )
    try:

        async def profile_ok() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.get(
                        f"http://127.0.0.1:{rest_port}/v2/user/profile", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                return response.status_code == 200
            except httpx.TransportError:
                return False

        await eventually(profile_ok, timeout_s=15)
    finally:
        proc.terminate()
        raw, _ = await asyncio.wait_for(proc.communicate(), 15)
        output = raw.decode()
    assert proc.returncode == 0, output
    assert "simulator listening" in output
    assert "Redis is not reachable" in output
