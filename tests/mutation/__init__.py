"""Deliberate bugs in the code that guards money; `make mutation` checks the fast tiers catch every one.

Each `Mutation` replaces one exact piece of text (it must occur exactly once in its file) in a scratch copy
of the checkout; the fast tiers (`pytest -m "not e2e"`) must then fail. A mutation that survives is a hole in
the suite. `tests/unit/test_mutations.py` keeps this list in step with the code: when code moves, update
`find` here rather than delete the mutation.

To add one (or plant one listed in `LATER` once its code exists), append a
`Mutation` with the file, the exact text, its broken replacement and the test files most likely to catch it
(they run first, so a caught mutant stops early; every fast test still runs for one that is not caught).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str  # the bug, as a reviewer would name it
    path: str  # file, relative to the repository root
    find: str  # exact text, present exactly once in `path`
    replace: str  # the broken version
    hints: tuple[str, ...] = ()  # test files to run first


# The check at the top of the complete and release scripts (libs/common/positions.py), and the same without the id.
_OWN_CLAIM_CHECK = (
    "if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'closing' then\n"
    "  return 0\nend\n"
)
_STATE_CHECK = "if redis.call('HGET', KEYS[1], 'state') ~= 'closing' then\n  return 0\nend\n"

MUTATIONS: tuple[Mutation, ...] = (
    # --- SL / TP comparisons ------------------------------------------------------------------------
    Mutation(
        "long stop-loss fires only below the level (< instead of <=)",
        "libs/common/models.py",
        "if self.stop_loss is not None and price <= self.stop_loss:",
        "if self.stop_loss is not None and price < self.stop_loss:",
        ("tests/monitor/test_decision.py", "tests/unit/test_models.py", "tests/monitor/test_monitor.py"),
    ),
    Mutation(
        "long take-profit fires only above the level (> instead of >=)",
        "libs/common/models.py",
        "if self.take_profit is not None and price >= self.take_profit:",
        "if self.take_profit is not None and price > self.take_profit:",
        ("tests/monitor/test_decision.py", "tests/unit/test_models.py", "tests/monitor/test_monitor.py"),
    ),
    Mutation(
        "short stop-loss compared like a long one (<= instead of >=)",
        "libs/common/models.py",
        "if self.stop_loss is not None and price >= self.stop_loss:",
        "if self.stop_loss is not None and price <= self.stop_loss:",
        ("tests/monitor/test_decision.py", "tests/unit/test_models.py", "tests/monitor/test_monitor.py"),
    ),
    Mutation(
        "short take-profit compared like a long one (>= instead of <=)",
        "libs/common/models.py",
        "if self.take_profit is not None and price <= self.take_profit:",
        "if self.take_profit is not None and price >= self.take_profit:",
        ("tests/monitor/test_decision.py", "tests/unit/test_models.py", "tests/monitor/test_monitor.py"),
    ),
    Mutation(
        "a short's P&L has a long's sign",
        "libs/common/models.py",
        "return Paise(per_unit * self.quantity if self.side is Side.LONG else -per_unit * self.quantity)",
        "return Paise(per_unit * self.quantity)",
        ("tests/unit/test_models.py",),
    ),
    Mutation(
        "a price exactly PRICE_STALE_AFTER_S old counts as fresh",
        "libs/common/freshness.py",
        'return "stale" if age_s >= self.stale_after_s else "fresh"',
        'return "stale" if age_s > self.stale_after_s else "fresh"',
        ("tests/unit/test_freshness.py", "tests/monitor/test_decision.py"),
    ),
    Mutation(
        "an expired cached price is still acted on (Layer 3 ignored)",
        "libs/common/freshness.py",
        "if age_s is None or age_s >= self.expire_after_s:",
        "if age_s is None or age_s >= self.expire_after_s * 1000:",
        ("tests/unit/test_freshness.py", "tests/monitor/test_decision.py", "tests/monitor/test_monitor.py"),
    ),
    Mutation(
        "the emergency close decides on a price older than PRICE_CACHE_TTL_S",
        "services/api/emergency.py",
        "if truth is None or freshness.source is None:",
        "if truth is None:",
        ("tests/api/test_emergency.py",),
    ),
    # --- the claim that makes a close happen at most once -------------------------------------------
    Mutation(
        "claim is check-then-set (read the state, then write it: two round trips)",
        "libs/common/positions.py",
        "        result = await self._claim(\n"
        "            keys=[keys.position(symbol), keys.POSITIONS_REV], args=[claim_id, repr(self._clock.now()), "
        "reason.value]\n        )\n",
        "        state = await self._redis.hget(keys.position(symbol), 'state')\n"
        "        result = 'missing' if state is None else ('ok' if state == 'open' else state)\n"
        "        if result == 'ok':\n"
        "            await self._redis.hset(keys.position(symbol), mapping={'state': 'closing', 'claim_id': claim_id,"
        " 'claimed_at': repr(self._clock.now()), 'close_reason': reason.value})\n"
        "            result = [x for kv in (await self._redis.hgetall(keys.position(symbol))).items() for x in kv]\n",
        ("tests/integration/test_closing.py", "tests/monitor/test_monitor_sim.py", "tests/api/test_emergency.py"),
    ),
    Mutation(
        "claim does not check the state (a closing position can be claimed again)",
        "libs/common/positions.py",
        "if state ~= 'open' then return state end",
        "",
        ("tests/integration/test_closing.py", "tests/api/test_emergency.py"),
    ),
    Mutation(
        "a stale claim can finish the next claimant's close (complete ignores the claim id)",
        "libs/common/positions.py",
        "if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] then return 0 end",
        "if false then return 0 end",
        ("tests/integration/test_closing.py",),
    ),
    Mutation(
        "a stale claim can reopen the next claimant's close (release ignores the claim id)",
        "libs/common/positions.py",
        _OWN_CLAIM_CHECK + "redis.call('HSET', KEYS[1], 'state', 'open'",
        _STATE_CHECK + "redis.call('HSET', KEYS[1], 'state', 'open'",
        ("tests/integration/test_closing.py",),
    ),
    Mutation(
        "an unknown order outcome reopens the position (the retry sends a second order)",
        "libs/common/closing.py",
        '            await self._failed(request, claim_id, exc, outcome="unknown")\n            raise',
        '            await self._failed(request, claim_id, exc, outcome="unknown")\n'
        "            await self._store.release(request.symbol, claim_id, str(exc), retry_at)\n            raise",
        ("tests/monitor/test_unconfirmed_close.py",),
    ),
    Mutation(
        "reconcile finishes a close that has no filled order",
        "libs/common/closing.py",
        "        if fill is not None and (sold >= position.quantity or held == 0):\n",
        "        if sold >= 0:\n",
        ("tests/integration/test_closing.py",),
    ),
    Mutation(
        "a young claim is reconciled as stuck (a close still in flight elsewhere is reopened)",
        "services/monitor/core.py",
        "return claimed_at is None or now - claimed_at >= self._settings.monitor_stuck_close_s",
        "return True",
        ("tests/monitor/test_core.py", "tests/monitor/test_monitor.py"),
    ),
    Mutation(
        "the monitor keeps an older copy of a position over a newer one (its rev ignored)",
        "services/monitor/core.py",
        "        if rev <= self._revs.get(symbol, -1):\n            return False\n",
        "        if False:\n            return False\n",
        ("tests/monitor/test_core.py",),
    ),
    Mutation(
        "an emergency close retried with the same Idempotency-Key acts again",
        "services/api/idempotency.py",
        "if await self._redis.set(keys.idempotency(key), pending, nx=True, ex=PENDING_TTL_S):",
        "if await self._redis.set(keys.idempotency(key), pending, ex=PENDING_TTL_S):",
        ("tests/api/test_emergency.py",),
    ),
    Mutation(
        "a wrong API key is accepted",
        "services/api/security.py",
        "    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):",
        "    if presented is None:",
        ("tests/api/test_security.py",),
    ),
    # --- the price cache's expiry -------------------------------------------------------------------
    Mutation(
        "the feed's price TTL ignores PRICE_CACHE_TTL_S (hard-coded 300 s)",
        "services/feed/service.py",
        "self.cache = PriceCache(redis, settings.price_cache_ttl_s, fence=self.lease.fence_args)",
        "self.cache = PriceCache(redis, 300, fence=self.lease.fence_args)",
        ("tests/feed/test_feed_sim.py",),
    ),
    # --- reconnect jitter ---------------------------------------------------------------------------
    Mutation(
        "no jitter in any backoff (always the ceiling)",
        "libs/common/backoff.py",
        "return lowest + (ceiling - lowest) * self.rng.random()",
        "return ceiling",
        ("tests/unit/test_backoff.py", "tests/feed/test_outage.py"),
    ),
    Mutation(
        "no jitter once the attempt budget is spent (lock-step at the cap)",
        "services/feed/outage.py",
        "self._at_cap = Backoff(self.cap_s, self.cap_s, 0.2, self.base_s, self.rng)",
        "self._at_cap = Backoff(self.cap_s, self.cap_s, 0.0, self.base_s, self.rng)",
        ("tests/feed/test_outage.py",),
    ),
    Mutation(
        "the first attempt after a drop waits the backoff instead of going at once",
        "services/feed/outage.py",
        "if self.attempts == 1:\n            return 0.0",
        "if self.attempts == 1:\n            return self._within_budget.compute(1)",
        ("tests/feed/test_outage.py",),
    ),
    Mutation(
        "no quick attempts after the at-once one: a 1 s blip waits the 5-10 s backoff",
        "services/feed/outage.py",
        "if self.attempts <= 1 + QUICK_ATTEMPTS:",
        "if self.attempts <= 1:",
        ("tests/feed/test_outage.py",),
    ),
    # --- the feed's heartbeat: `connected` in feed:status outlives a killed feed ----------------------
    Mutation(
        "the freshness policy (monitor, health, emergency close) trusts feed:status without the feed's heartbeat",
        "libs/common/freshness.py",
        "if heartbeat_age_s is None:",
        "if False:",
        ("tests/unit/test_freshness.py", "tests/monitor/test_monitor.py", "tests/api/test_emergency.py"),
    ),
    Mutation(
        "the freshness policy accepts a heartbeat of any age",
        "libs/common/freshness.py",
        "if heartbeat_age_s > self.heartbeat_max_age_s:",
        "if heartbeat_age_s > self.heartbeat_max_age_s * 1000:",
        ("tests/unit/test_freshness.py", "tests/api/test_health.py", "tests/api/test_emergency.py"),
    ),
    # --- Layer 0: the safety net (libs/common/safety_net.py, its hook in libs/common/closing.py) ------------
    Mutation(
        "the guard's close does not disarm the safety-net GTT (a second exit can fire)",
        "libs/common/closing.py",
        "fired = await net.disarm(position)",
        "fired = None",
        ("tests/monitor/test_safety_net_keeper.py",),
    ),
    Mutation(
        "the disarm leaves the GTT live (never sends the cancel)",
        "libs/common/safety_net.py",
        'if net.state != "fired" and await self.cancel(gtt_id):',
        'if net.state != "fired":',
        ("tests/monitor/test_safety_net_keeper.py",),
    ),
    Mutation(
        "the safety net ignores the freeze quantity (one GTT the exchange rejects when it fires)",
        "libs/common/fno.py",
        "per_leg = int(freeze_quantity) // lot * lot",
        "per_leg = max(quantity, lot)",
        ("tests/unit/test_fno.py", "tests/monitor/test_safety_net_fno.py"),
    ),
    Mutation(
        "what fired GTTs sold is not counted: the guard sells the whole position again",
        "libs/common/closing.py",
        "guarded = position.quantity - sum(f.quantity or 0 for f in by_net)",
        "guarded = position.quantity",
        ("tests/monitor/test_safety_net_fno.py",),
    ),
    Mutation(
        "a keeper that lost its lease still calls the broker (the keeper's mark is not fenced)",
        "libs/common/safety_net.py",
        "    FENCE_CHECK\n    + \"\"\"\nlocal state = redis.call('HGET', KEYS[1], 'state')",
        "    \"\"\"\nlocal state = redis.call('HGET', KEYS[1], 'state')",
        ("tests/monitor/test_safety_net_fno.py",),
    ),
    Mutation(
        "a close sells the position's quantity even when the broker holds less (the broker-position cap removed)",
        "libs/common/closing.py",
        "want = guarded - sold if held is None else min(guarded - sold, held)",
        "want = guarded - sold",
        ("tests/monitor/test_broker_truth.py", "tests/api/test_broker_truth.py"),
    ),
    Mutation(
        "the safety-net keeper's GTT calls take the order slots kept for closes (no priority in the pacer)",
        "libs/common/pacing.py",
        "await self._take(_background.get())",
        "await self._take(False)",
        ("tests/unit/test_pacing.py",),
    ),
)

# Bugs to plant once their code exists: write them as above, with the exact text of that code (none left).
LATER: tuple[str, ...] = ()
