"""Which instruments the feed subscribes: the watchlist, plus every symbol with an open position.

The wanted set is the configured watchlist (default: every shipped NSE_EQ / NSE_INDEX instrument in simulator
mode, nothing with the real Upstox: there the open positions and `FEED_WATCHLIST` are the whole set, never the
synthetic `SIMEQ*` instruments) union `feed:subscriptions` (SYMBOL -> instrument key, kept by the monitor and
api for open positions) union the live requests published on `feed:subscription-requests`
("sub SYMBOL KEY" / "unsub SYMBOL"), union the underlying index of every F&O contract in it (so a frozen
option quote can be told from a quiet one). Pub/sub loses messages, so the hash is re-read after every
reconnect and on a timer.

Options are subscribed in `option_greeks` (their LTP plus greeks, OI and IV), everything else in `FEED_MODE`,
unless mixing the two modes would break Upstox's combined per-mode limits: then all in `FEED_MODE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger
from redis.asyncio import Redis

from libs.common import keys
from libs.common.instruments import InstrumentIndex
from libs.common.settings import Settings

WATCHLIST_SEGMENTS = ("NSE_EQ", "NSE_INDEX")
OPTION_MODE = "option_greeks"  # an option's LTP plus its greeks, OI and IV
# Upstox keys per connection, per mode: (alone, when modes are combined) (upstox-orders-and-tokens.md).
MODE_LIMITS = {"ltpc": (5000, 2000), "option_greeks": (3000, 2000), "full": (2000, 1500)}


@dataclass(frozen=True, slots=True)
class Change:
    """Symbols to subscribe (SYMBOL -> key) and to unsubscribe (SYMBOL -> key) after an update."""

    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def watchlist(settings: Settings, index: InstrumentIndex) -> dict[str, str]:
    """SYMBOL -> instrument key of `FEED_WATCHLIST`. Empty: in simulator mode every shipped NSE_EQ / NSE_INDEX
    instrument; with the real Upstox nothing (open positions are added from `feed:subscriptions`).

    An entry may be a known symbol ("BOSCHLTD") or "SYMBOL=INSTRUMENT_KEY" for one not in the file. With the real
    Upstox the simulator's synthetic instruments are never subscribed.
    """
    real = not settings.simulator_mode
    if not settings.feed_watchlist:
        if real:
            return {}
        return {i.trading_symbol: i.instrument_key for i in index.all if i.segment in WATCHLIST_SEGMENTS}
    out: dict[str, str] = {}
    for entry in settings.feed_watchlist:
        symbol, _, key = entry.partition("=")
        symbol = symbol.strip()
        known = index.by_symbol(symbol)
        if real and not key and known is not None and known.synthetic:
            logger.warning(f"Watchlist symbol {symbol} is a simulator instrument; not subscribed on the real Upstox")
            continue
        key = key.strip() or (index.key_of(symbol) or "")
        if not key:
            logger.warning(f"Watchlist symbol {symbol} is not in the instrument list; give it as {symbol}=KEY")
            continue
        out[symbol] = key
    return out


class Subscriptions:
    """The wanted set and the instrument key -> symbol map the decoder uses (updated in place)."""

    def __init__(self, watch: dict[str, str], index: InstrumentIndex) -> None:
        self._watch = dict(watch)
        self._from_redis: dict[str, str] = {}
        self._requested: dict[str, str] = {}
        # Every known key maps to its symbol, so a frame for any instrument can be stored.
        self.symbol_of: dict[str, str] = {i.instrument_key: i.trading_symbol for i in index.all}
        self.symbol_of.update({key: symbol for symbol, key in self._watch.items()})
        self._index = index  # asked at each change: it lists each day's new contracts (GuardInstruments)
        self._wanted = self._compute()

    @property
    def wanted(self) -> dict[str, str]:
        """SYMBOL -> instrument key of everything the feed should be subscribed to now."""
        return self._wanted

    def _compute(self) -> dict[str, str]:
        wanted = {**self._from_redis, **self._requested, **self._watch}
        underlyings = dict(u for k in wanted.values() if (u := self._underlying(k)) is not None)
        return {**underlyings, **wanted}

    def _underlying(self, key: str) -> tuple[str, str] | None:
        """(symbol, key) of the index a contract follows, None for anything else."""
        inst = self._index.by_key(key)
        und = self._index.by_key(inst.underlying_key) if inst is not None and inst.is_derivative else None
        return None if und is None else (und.trading_symbol, und.instrument_key)

    def _is_option(self, key: str) -> bool:
        inst = self._index.by_key(key)
        return inst is not None and inst.is_option

    def modes(self, base: str) -> dict[str, str]:
        """SYMBOL -> subscription mode of every wanted symbol (see the module's note)."""
        plan = {s: OPTION_MODE if self._is_option(k) else base for s, k in self._wanted.items()}
        counts: dict[str, int] = {}
        for mode in plan.values():
            counts[mode] = counts.get(mode, 0) + 1
        if len(counts) > 1 and any(n > MODE_LIMITS.get(m, (0, 0))[1] for m, n in counts.items()):
            return dict.fromkeys(plan, base)
        return plan

    def _update(self) -> Change:
        before = self._wanted
        after = self._compute()
        self._wanted = after
        for symbol, key in after.items():
            self.symbol_of[key] = symbol
        added = {s: k for s, k in after.items() if before.get(s) != k}
        removed = {s: k for s, k in before.items() if after.get(s) != k}
        return Change(added, removed)

    async def refresh(self, redis: Redis) -> Change:
        """Re-read `feed:subscriptions` (the truth for open positions) and return what changed."""
        rows = await redis.hgetall(keys.FEED_SUBSCRIPTIONS)
        self._from_redis = {str(s): str(k) for s, k in rows.items() if k}
        return self._update()

    def apply_request(self, message: str) -> Change:
        """Apply "sub SYMBOL INSTRUMENT_KEY" or "unsub SYMBOL"; a malformed request is logged and ignored.
        F&O symbols have spaces ("NIFTY 24000 CE 08 DEC 26"); instrument keys never do, so the key is the last word."""
        method, _, rest = message.strip().partition(" ")
        symbol, _, key = rest.rpartition(" ")
        if method == "sub" and symbol.strip() and key:
            self._requested[symbol.strip()] = key
        elif method == "unsub" and rest.strip():
            self._requested.pop(rest.strip(), None)
            self._from_redis.pop(rest.strip(), None)  # the next re-read restores it if the hash still has it
        else:
            logger.warning(f"Ignoring malformed subscription request: {message[:80]!r}")
            return Change()
        return self._update()
