"""Leases with a fencing token in Redis: one holder at a time of a job that must not run twice.

`Lease` is the mechanism; its users are the feed (`FeedLease`: the one Upstox market-data connection) and the
monitors' safety-net keeper (`safety_net:lease`, `services.monitor.safety_net`: one monitor places the GTTs).

Feed leadership: a Redis lease with a fencing token, so exactly one feed holds the Upstox connection.

Upstox allows one market-data connection per app and user, so any number of feed processes may run but
only the holder of `feed:lease` connects and writes. The lease expires `FEED_LEASE_S` after its last renewal;
a standby acquires it once it has expired. Each acquisition gets a new fencing token (`N:holder`, N from
`feed:lease:counter`), and every feed write script starts with `FENCE_CHECK`: inside Redis, atomically with the
write, it refuses the write unless the token passed is the lease's current one. A paused or partitioned old
leader that comes back therefore writes nothing (its scripts return -1, raised here as `FencedOut`) until it
notices, at its next renewal, that it lost the lease and closes its connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock
from libs.common.settings import Settings

# Prologue of a fenced write script: its last two ARGV are the lease key and the writer's token ('' and '' for
# an unfenced writer: tests and tools). Returns -1 before any write when the token is not the current one.
FENCE_CHECK: Final = """
local fence_key, fence_token = ARGV[#ARGV - 1], ARGV[#ARGV]
if fence_key ~= '' and redis.call('HGET', fence_key, 'token') ~= fence_token then return -1 end
"""
FENCED: Final = -1

# KEYS: lease, counter. ARGV: instance, holder, lease_ms, now, restart_after_s. Returns the token, or '' when
# another holds it. The holder itself (its connection task restarted) gets its own token back. A process with the
# holder's instance name (the same feed restarted after a crash) takes over, with a new token, once the lease
# has gone `restart_after_s` unrenewed: a live holder renews more often than that.
_ACQUIRE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'renewed_at', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return redis.call('HGET', KEYS[1], 'token')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local renewed = tonumber(redis.call('HGET', KEYS[1], 'renewed_at')) or 0
  local same = redis.call('HGET', KEYS[1], 'instance') == ARGV[1]
  if not (same and tonumber(ARGV[4]) - renewed > tonumber(ARGV[5])) then return '' end
  redis.call('DEL', KEYS[1])
end
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[2]
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'holder', ARGV[2], 'token', token, 'acquired_at', ARGV[4],
  'renewed_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return token
"""

# KEYS: lease. ARGV: token, instance, holder, lease_ms, now. Returns 1 when renewed, 0 when another holds it.
# A lease that vanished (a failover lost its last write) is taken back under the same token: nobody else holds it.
_RENEW = """
local token = redis.call('HGET', KEYS[1], 'token')
if token == ARGV[1] then
  redis.call('HSET', KEYS[1], 'renewed_at', ARGV[5])
elseif not token then
  redis.call('HSET', KEYS[1], 'instance', ARGV[2], 'holder', ARGV[3], 'token', ARGV[1], 'acquired_at', ARGV[5],
    'renewed_at', ARGV[5])
else
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: lease. ARGV: token. Deletes the lease only if it is still ours (a clean stop hands over at once).
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class FencedOut(RedisError):
    """A feed write was refused inside Redis: this process does not hold the feed lease (any more)."""


def fence_checked(result: Any) -> Any:
    """Raise FencedOut when a fenced script answered `FENCED`; return its result otherwise."""
    if result == FENCED:
        raise FencedOut("this feed does not hold the feed lease; write refused")
    return result


class Lease:
    """This process's side of the lease in hash `key` (tokens counted in `counter`). `token` is its fencing
    token while it holds the lease, '' otherwise."""

    def __init__(self, redis: Redis, clock: Clock, *, key: str, counter: str, lease_s: float, instance: str) -> None:
        self._redis = redis
        self._clock = clock
        self.key = key
        self._counter = counter
        self.instance = instance
        self.holder = f"{instance}/{uuid.uuid4().hex[:8]}"  # unique even if two share a name
        self.lease_s = lease_s
        self._lease_ms = int(lease_s * 1000)
        self.token = ""
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def fence_args(self) -> list[str]:
        """The last two ARGV of a fenced write script (see `FENCE_CHECK`)."""
        return [self.key, self.token]

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process now leads. Raises RedisError."""
        token = await self._acquire(
            keys=[self.key, self._counter],
            args=[self.instance, self.holder, self._lease_ms, repr(self._clock.now()), self._lease_ms / 2000],
        )
        self.token = str(token or "")
        return bool(self.token)

    async def renew(self) -> bool:
        """Extend the lease; False (and `token` cleared) when another process holds it. Raises RedisError."""
        renewed = await self._renew(
            keys=[self.key],
            args=[self.token, self.instance, self.holder, self._lease_ms, repr(self._clock.now())],
        )
        if not renewed:
            self.token = ""
        return bool(renewed)

    def step_down(self) -> None:
        """Forget the token: from now on every fenced write of this process is refused."""
        self.token = ""

    async def release(self) -> None:
        """Give the lease up now (clean stop) if still ours. Raises RedisError."""
        if self.token:
            await self._release(keys=[self.key], args=[self.token])
            self.token = ""


class FeedLease(Lease):
    """The feed's lease (`feed:lease`, `FEED_LEASE_S`)."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        super().__init__(
            redis, clock, key=keys.FEED_LEASE, counter=keys.FEED_LEASE_COUNTER, lease_s=settings.feed_lease_s,
            instance=settings.instance_name,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who holds a lease (leads the feed, keeps the safety nets), as health and /status show it."""

    leader: str | None  # instance name of the lease holder, None when nobody holds it
    token: str | None
    leader_since: float | None  # epoch s of the acquisition
    lease_age_s: float | None  # seconds since the lease was last renewed
    lease_expires_in_s: float | None
    standbys: list[str]  # live instances of the service other than the leader

    def public(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "fencing_token": self.token,
            "leader_since": self.leader_since,
            "lease_age_s": self.lease_age_s,
            "lease_expires_in_s": self.lease_expires_in_s,
            "standbys": self.standbys,
        }


async def read_leadership(
    redis: Redis, settings: Settings, clock: Clock, *, key: str = keys.FEED_LEASE, service: str = "feed"
) -> Leadership:
    """The holder of lease `key` (the feed's by default), its lease and the standbys (instances of `service`
    beating within the TTL), in one round trip.

    Raises RedisError.
    """
    now = clock.now()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(key)
        pipe.pttl(key)
        pipe.zrangebyscore(keys.instances(service), now - settings.heartbeat_ttl_s, "+inf")
        lease, pttl_ms, alive = cast(tuple[dict[str, str], int, list[str]], tuple(await pipe.execute()))
    return leadership_from(lease, pttl_ms, alive, now)


def leadership_from(lease: dict[str, str], pttl_ms: int, alive: list[str], now: float) -> Leadership:
    """Leadership from the lease hash, its PTTL and the service's live instances (read elsewhere in one call)."""
    leader = lease.get("instance") if lease else None
    renewed = _float(lease.get("renewed_at"))
    return Leadership(
        leader=leader,
        token=lease.get("token") if lease else None,
        leader_since=_float(lease.get("acquired_at")),
        lease_age_s=None if renewed is None else round(max(0.0, now - renewed), 3),
        lease_expires_in_s=round(pttl_ms / 1000, 3) if pttl_ms >= 0 else None,
        standbys=sorted(str(name) for name in alive if name != leader),
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
