"""Races that race: contenders on warmed, separate Redis connections, released together.

A race test whose first contender wins while the others are still connecting proves nothing: a claim made of
a read then a write (check-then-set) passes it. Here every contender has its own connection, already open
and with the claim script loaded, and all are released at once by a barrier: an `asyncio.Barrier` inside a
process and a `multiprocessing` barrier across processes (the monitor and the api are separate processes).
`CheckThenSetStore` is the non-atomic claim the race tests must catch; tests assert that they do.
A contending process is spawned from this one and seals itself first (`tests.helpers.sealed_child`: allow-listed
environment, a temporary working directory), then builds its `Settings` without reading `.env`.

    result = await race_closes(settings, contenders=100)                 # in this process
    result = await race_closes(settings, contenders=100, processes=4)    # 4 processes x 25
    assert result.orders == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier as ProcessBarrier
from typing import Any, TypeVar

from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import Fill, PaperBroker
from libs.common.clock import SystemClock
from libs.common.closing import Closer, CloseRequest
from libs.common.models import CloseReason, Position, PriceSource, Side
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore
from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.helpers import ChildPlace, sealed_child

T = TypeVar("T")

SYMBOL = "BOSCHLTD"
ORDERS_KEY = "test:race:orders"  # counted in Redis, so orders from every process add up
CLAIMS_KEY = "test:race:claims"  # claims granted, counted the same way
OUTCOMES_KEY = "test:race:outcomes"


async def released_together(contenders: Sequence[Callable[[], Awaitable[T]]]) -> list[T | BaseException]:
    """Run every contender, all released at the same moment by one barrier; exceptions are returned."""
    barrier = asyncio.Barrier(len(contenders))

    async def run(contender: Callable[[], Awaitable[T]]) -> T:
        await barrier.wait()
        return await contender()

    return await asyncio.gather(*(run(c) for c in contenders), return_exceptions=True)


class CountedClaims(PositionStore):
    """The real store, counting every claim it grants in Redis: the race must grant exactly one, whatever the
    later lines (the fence before the order) would have caught."""

    async def claim(self, symbol: str, reason: CloseReason, claim_id: str | None = None) -> tuple[str, Position]:
        granted = await super().claim(symbol, reason, claim_id)
        await self._redis.incr(CLAIMS_KEY)
        return granted


class CheckThenSetStore(PositionStore):
    """A deliberately broken claim: read the state, then write it (two round trips). Must lose the race test."""

    async def claim(self, symbol: str, reason: CloseReason, claim_id: str | None = None) -> tuple[str, Position]:
        state = await self._redis.hget(keys.position(symbol), "state")
        if state is None:
            raise PositionNotFound(symbol)
        if state != "open":
            raise PositionConflict(symbol, str(state))
        claim_id = claim_id or uuid.uuid4().hex[:16]
        fields = {
            "state": "closing",
            "claim_id": claim_id,
            "claimed_at": repr(self._clock.now()),
            "close_reason": reason.value,
        }
        await self._redis.hset(keys.position(symbol), mapping=fields)
        await self._redis.incr(CLAIMS_KEY)
        self._mine = (symbol, claim_id)
        position = await self.get(symbol)
        assert position is not None
        return claim_id, position

    async def claim_holder(self, symbol: str) -> tuple[str, str, float | None]:
        # Broken the same way: it trusts its own write instead of reading who holds the claim now.
        state, holder, claimed_at = await super().claim_holder(symbol)
        mine = getattr(self, "_mine", ("", ""))
        return state, mine[1] if mine[0] == symbol else holder, claimed_at


class CountingBroker(PaperBroker):
    """Fills at the decision price after `delay_s`, counting every order in Redis (shared by processes)."""

    def __init__(self, redis: Redis, delay_s: float = 0.05) -> None:
        super().__init__()
        self._redis = redis
        self._delay_s = delay_s

    async def close(self, position: Position, tag: str, decision_price: int | None) -> Fill:
        await self._redis.incr(ORDERS_KEY)
        await asyncio.sleep(self._delay_s)
        return await super().close(position, tag, decision_price)


def bosch() -> Position:
    return Position(
        symbol=SYMBOL, instrument_key="NSE_EQ|INE323A01026", side=Side.LONG, quantity=10,
        entry_price=73500, stop_loss=69825, take_profit=None, opened_at=1.0,
    )  # fmt: skip


@dataclass(frozen=True)
class RaceResult:
    orders: int  # orders the broker received
    claims: int  # claims granted
    closed: int  # closes that returned a record
    conflicts: int  # PositionConflict: lost the claim (or, for a broken claim, found it settled elsewhere)
    errors: list[str]  # anything else
    journal: int  # entries in the journal of closes


async def _warmed_closers(settings: Settings, count: int, check_then_set: bool) -> list[tuple[Redis, Closer]]:
    """`count` closers, each on its own connection, opened and with the claim script loaded."""
    store_type = CheckThenSetStore if check_then_set else CountedClaims
    closers = []
    for _ in range(count):
        client = create_redis(settings)
        store = store_type(client, SystemClock())
        with contextlib.suppress(PositionNotFound):
            await store.claim("WARMUP", CloseReason.EMERGENCY)  # connects and loads the script: no such position
        closers.append((client, Closer(store, CountingBroker(client), SystemClock())))
    return closers


async def _contend(
    settings: Settings, contenders: int, check_then_set: bool, process_barrier: ProcessBarrier | None
) -> list[Any]:
    closers = await _warmed_closers(settings, contenders, check_then_set)
    request = CloseRequest(SYMBOL, CloseReason.STOP_LOSS, "monitor", 57500, PriceSource.STALE, 45.0)
    try:
        if process_barrier is not None:
            await asyncio.to_thread(process_barrier.wait, 30)  # every process warmed: go together
        return await released_together([lambda c=closer: c.close(request) for _, closer in closers])
    finally:
        for client, _ in closers:
            await client.aclose()


def _process_main(place: ChildPlace, contenders: int, check_then_set: bool, barrier: ProcessBarrier) -> None:
    """One contending process: its results are counted in Redis (`OUTCOMES_KEY`)."""
    os.chdir(place["cwd"])  # multiprocessing starts a child with the parent's environment and directory
    os.environ.clear()
    os.environ.update(place["env"])
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    async def main() -> None:
        results = await _contend(settings, contenders, check_then_set, barrier)
        client = create_redis(settings)
        try:
            for outcome in results:
                await client.hincrby(OUTCOMES_KEY, _outcome(outcome), 1)
        finally:
            await client.aclose()

    asyncio.run(main())


def _outcome(result: object) -> str:
    if isinstance(result, PositionConflict):
        return "conflict"
    if isinstance(result, BaseException):
        return f"error: {type(result).__name__}: {result}"
    return "closed"


async def race_closes(
    settings: Settings, *, contenders: int, processes: int = 1, check_then_set: bool = False
) -> RaceResult:
    """Open one position, then close it from `contenders` closers spread over `processes` processes, released
    together on warmed, separate connections. Returns what the broker and the journal saw."""
    redis = create_redis(settings)
    try:
        await redis.delete(ORDERS_KEY, CLAIMS_KEY, OUTCOMES_KEY)
        await PositionStore(redis, SystemClock()).open(bosch())
        if processes == 1:
            outcomes = [_outcome(r) for r in await _contend(settings, contenders, check_then_set, None)]
        else:
            spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no event loop copied by fork
            barrier = spawn.Barrier(processes)
            each = contenders // processes
            with tempfile.TemporaryDirectory(prefix="guard-race-") as workdir:
                place = sealed_child(workdir, REDIS_URL=settings.redis_url)
                children = [
                    spawn.Process(target=_process_main, args=(place, each, check_then_set, barrier))
                    for _ in range(processes)
                ]
                for child in children:
                    child.start()
                for child in children:
                    await asyncio.to_thread(child.join, 60)
                    assert child.exitcode == 0, f"contending process exited with {child.exitcode}"
            counts = await redis.hgetall(OUTCOMES_KEY)
            outcomes = [name for name, n in counts.items() for _ in range(int(n))]
        return RaceResult(
            orders=int(await redis.get(ORDERS_KEY) or 0),
            claims=int(await redis.get(CLAIMS_KEY) or 0),
            closed=outcomes.count("closed"),
            conflicts=outcomes.count("conflict"),
            errors=[o for o in outcomes if o.startswith("error")],
            journal=int(await redis.llen(keys.CLOSED_JOURNAL)),
        )
    finally:
        await redis.aclose()
