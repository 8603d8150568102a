"""Feed leadership end to end: two feed processes, one Upstox connection, takeover on SIGKILL and SIGSTOP.

Real processes on the HA topology (Sentinel master + replica). The measured takeover times are printed
(`-s`) and quoted in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from libs.common import keys
from tests.ha.harness import HAStack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

LEASE_S = 2.0


async def _sim_connections(stack: HAStack) -> int:
    return len((await stack.sim_state())["connections"])


async def test_one_leader_streams_and_a_standby_takes_over(tmp_path: Path) -> None:
    async with HAStack(tmp_path, FEED_LEASE_S=str(LEASE_S)) as stack:
        await stack.start("sim")
        await stack.start_instances(("feed", "a"))
        await eventually(lambda: stack.leader(), timeout_s=10)
        await stack.start_instances(("feed", "b"), ("api", "a"))
        health = await stack.wait_connected(True)

        # One leader, one standby; exactly one connection at the simulator.
        leadership = health["feed_leadership"]
        assert leadership["leader"] == "a"
        assert leadership["standbys"] == ["b"]
        assert 0 <= leadership["lease_age_s"] <= LEASE_S
        assert (await stack.status())["feed"]["leadership"]["leader"] == "a"
        assert await _sim_connections(stack) == 1
        assert stack.count("feed@b", "Standby: another feed instance holds the feed lease") == 1
        assert stack.check_instance("feed", "a") == 0 and stack.check_instance("feed", "b") == 0

        # SIGSTOP the leader past its lease: b takes over and streams; a, resumed, writes nothing and steps down.
        stack.pause("feed@a")
        paused = time.monotonic()
        await eventually(lambda: _leader_is(stack, "b"), timeout_s=LEASE_S + 5, interval_s=0.05)
        took_lease_s = time.monotonic() - paused
        await _wait_fresh_write(stack)
        streaming_s = time.monotonic() - paused
        print(f"\n[figure] SIGSTOP leader: lease taken {took_lease_s:.2f} s, streaming {streaming_s:.2f} s")
        assert streaming_s < LEASE_S + 3, streaming_s  # FEED_LEASE_S + one reconnect
        lease_before = await stack.redis.hgetall(keys.FEED_LEASE)

        mark = stack.mark("feed@a")
        stack.resume("feed@a")
        await stack.wait_log("feed@a", "Lost the feed lease", since=mark, timeout_s=10)
        await eventually(lambda: _connections_are(stack, 1), timeout_s=10)
        assert (await stack.redis.hgetall(keys.FEED_LEASE))["token"] == lease_before["token"]
        health = await stack.wait_connected(True)
        assert health["feed_leadership"]["leader"] == "b"
        await eventually(lambda: _standbys_are(stack, ["a"]), timeout_s=5)  # a beats again as a standby

        # SIGKILL the leader: the standby (a again) takes over within the lease plus one reconnect.
        stack.kill("feed@b")
        killed = time.monotonic()
        await eventually(lambda: _leader_is(stack, "a"), timeout_s=LEASE_S + 5, interval_s=0.05)
        await _wait_fresh_write(stack)
        takeover_s = time.monotonic() - killed
        print(f"[figure] SIGKILL leader: standby streaming after {takeover_s:.2f} s (FEED_LEASE_S {LEASE_S:g})")
        assert takeover_s < LEASE_S + 3, takeover_s
        assert await _sim_connections(stack) == 1
        health = await stack.wait_connected(True)
        assert health["feed_leadership"]["leader"] == "a"
        # The killed instance's own heartbeat expires within HEARTBEAT_TTL_S of its last beat; the takeover can be
        # quicker than that (1.65 s against a 2 s TTL once), so wait for it rather than assume it is gone.
        ttl_s = float(stack.env["HEARTBEAT_TTL_S"])
        await eventually(lambda: asyncio.to_thread(stack.check_instance, "feed", "b"), timeout_s=ttl_s + 2)


async def _leader_is(stack: HAStack, instance: str) -> bool:
    return await stack.leader() == instance


async def _standbys_are(stack: HAStack, standbys: list[str]) -> bool:
    return bool((await stack.health())["feed_leadership"]["standbys"] == standbys)


async def _connections_are(stack: HAStack, count: int) -> bool:
    return await _sim_connections(stack) == count


async def _wait_fresh_write(stack: HAStack) -> None:
    """Wait until a price is written after now (the new leader streams)."""
    since = time.time()

    async def written() -> bool:
        newest = await stack.redis.zrange(keys.PRICE_INDEX, -1, -1, withscores=True)
        return bool(newest) and float(newest[0][1]) > since

    await eventually(written, timeout_s=15, interval_s=0.05)
