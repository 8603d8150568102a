"""WAIT after a claim, against a real master and replica: no order leaves on a claim no replica confirmed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from libs.common.clock import ManualClock, SystemClock
from libs.common.closing import ClaimFenced, Closer
from libs.common.models import CloseReason, PositionState
from libs.common.positions import ClaimHolder, PositionStore
from libs.common.redis_client import create_redis
from libs.common.replication import ClaimConfirmation, ClaimNotReplicated, confirmed_on_replica
from libs.common.settings import Settings
from tests.ha.topology import sentinel_topology
from tests.helpers import RedisServer, eventually
from tests.integration.test_closing import CountingBroker, bosch, request

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.3


async def test_a_claim_is_sent_only_once_a_replica_has_it(tmp_path: Path) -> None:
    with sentinel_topology(tmp_path) as topo:
        await topo.wait_replicas(1)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, redis_sentinels=topo.sentinels_setting, claim_replica_timeout_s=TIMEOUT_S
        )
        redis = create_redis(settings)
        try:
            await redis.flushall()
            store = PositionStore(redis, SystemClock())
            broker = CountingBroker()
            closer = Closer(store, broker, SystemClock(), confirmation=ClaimConfirmation(redis, settings))
            await store.open(bosch())
            timings = []
            for _ in range(50):  # what WAIT costs a close when the replica is healthy
                started = time.perf_counter()
                confirmed, _ = await confirmed_on_replica(redis, 5.0, "BOSCHLTD")  # a loaded machine can take long
                assert confirmed  # only time it
                timings.append((time.perf_counter() - started) * 1000)
            timings.sort()
            print(f"\n[figure] claim confirmed on a replica (ROLE + INCR/WAIT): p50 {timings[25]:.2f} ms, "
                  f"max {timings[-1]:.2f} ms")  # fmt: skip

            # The replica hangs: WAIT times out, no order is sent, the position is open again with the reason.
            replica = topo.data[1]
            assert replica.proc is not None
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(ClaimNotReplicated) as caught:
                    await closer.close(request(), retry_at=123.0)
                waited_s = time.monotonic() - started
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            assert broker.orders == 0
            assert caught.value.status_code == 503
            assert TIMEOUT_S <= waited_s < TIMEOUT_S + 1.0
            position = await store.get("BOSCHLTD")
            assert position is not None
            assert position.state is PositionState.OPEN
            assert "not confirmed by a Redis replica" in position.last_error
            assert position.next_attempt_at == 123.0

            # The replica answers again: the retried close goes through, one order.
            record = await closer.close(request())
            assert broker.orders == 1
            assert record.symbol == "BOSCHLTD"
            replica_state = replica.client().hget  # the replica follows the master
            await eventually(lambda: replica_state("position:BOSCHLTD", "state") == "closed", timeout_s=5)
        finally:
            await redis.aclose()


async def test_a_lone_master_confirms_at_once(redis_srv: RedisServer) -> None:
    redis = create_redis(Settings(_env_file=None, redis_url=redis_srv.url))  # type: ignore[call-arg]
    try:
        started = time.monotonic()
        confirmed, _ = await confirmed_on_replica(redis, 5.0, "BOSCHLTD")
        assert confirmed
        assert time.monotonic() - started < 1.0  # no WAIT for a replica that does not exist
    finally:
        await redis.aclose()


async def test_a_claim_held_up_in_its_wait_past_half_the_stuck_close_time_sends_no_order(
    redis_srv: RedisServer,
) -> None:
    """The claim fence runs after the WAIT: time spent confirming counts against the claim's age."""
    settings = Settings(_env_file=None, redis_url=redis_srv.url, monitor_stuck_close_s=4)  # type: ignore[call-arg]
    redis = create_redis(settings)
    try:
        await redis.flushall()
        clock = ManualClock()
        store = PositionStore(redis, clock)
        await store.open(bosch())
        broker = CountingBroker()
        closer = Closer(
            store, broker, clock, settings=settings, confirmation=HeldUp(redis, settings, clock, held_s=2.5)
        )
        with pytest.raises(ClaimFenced) as caught:
            await closer.close(request())
        assert broker.orders == 0
        assert "too old" in str(caught.value)
        position = await store.get("BOSCHLTD")
        assert position is not None
        assert position.state is PositionState.CLOSING  # left to the reconcile, which finds no order by its tag

        await redis.flushall()
        await store.open(bosch())
        closer = Closer(
            store, broker, clock, settings=settings, confirmation=HeldUp(redis, settings, clock, held_s=1.5)
        )
        await closer.close(request())  # younger than half of MONITOR_STUCK_CLOSE_S: sent
        assert broker.orders == 1
    finally:
        await redis.flushall()
        await redis.aclose()


async def test_a_claim_taken_over_while_it_is_confirmed_sends_no_order(redis_srv: RedisServer) -> None:
    """The fence reads the claim holder in the confirmation's round trip, after it: a claim settled and taken by
    another closer meanwhile (its confirmation held up) is seen as such, and no order leaves on it."""
    settings = Settings(_env_file=None, redis_url=redis_srv.url)  # type: ignore[call-arg]
    redis = create_redis(settings)
    try:
        await redis.flushall()
        store = PositionStore(redis, SystemClock())
        await store.open(bosch())
        broker = CountingBroker()
        closer = Closer(store, broker, SystemClock(), settings=settings, confirmation=TakenOver(redis, settings, store))
        with pytest.raises(ClaimFenced, match="taken over"):
            await closer.close(request())
        assert broker.orders == 0
        position = await store.get("BOSCHLTD")
        assert position is not None and position.state is PositionState.CLOSING
        assert position.claim_id == "other-closer"  # the other closer's claim stands
    finally:
        await redis.flushall()
        await redis.aclose()


class TakenOver(ClaimConfirmation):
    """While this closer confirms its claim, another settles it (reopened, as a reconcile does) and claims anew."""

    def __init__(self, redis: Redis, settings: Settings, store: PositionStore) -> None:
        super().__init__(redis, settings)
        self._store = store

    async def confirm(self, symbol: str) -> ClaimHolder:
        _, holder, _ = await self._store.claim_holder(symbol)
        assert await self._store.release(symbol, holder, "reconciled: no order of its tag", None)
        await self._store.claim(symbol, CloseReason.STOP_LOSS, "other-closer")
        return await super().confirm(symbol)


class HeldUp(ClaimConfirmation):
    """The closer is held up for `held_s` (the manual clock moves) in its confirmation."""

    def __init__(self, redis: Redis, settings: Settings, clock: ManualClock, held_s: float) -> None:
        super().__init__(redis, settings)
        self._manual = clock
        self._held_s = held_s

    async def confirm(self, symbol: str) -> ClaimHolder:
        self._manual.advance(self._held_s)
        return await super().confirm(symbol)
