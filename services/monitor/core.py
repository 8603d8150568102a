"""The monitor's decisions without I/O: events, tick notices and snapshot slices in; closes, reads and log lines out.

Nothing here awaits, reads Redis or looks at a clock: `Monitor` feeds it what it read or received (with the time
`now`) and carries out the `Output`. So every interleaving of events, notices, sweeps and closes is a plain
sequence of calls a test can make.

What it knows of each symbol is the copy with the highest `rev` it has seen (libs/common/positions.py): an
"opened" event's record, a read after another event, a sweep's slice, or "not open" at the rev of a "closing",
"closed" or "removed" event. An older copy arriving later (a sweep that read before an event) changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from libs.common.closing import CloseRequest
from libs.common.freshness import FeedLiveness, FreshnessPolicy, PriceTruth
from libs.common.models import CloseReason, MalformedRecord, Position, PositionState, PriceSource
from libs.common.money import ltp_paise, to_paise
from libs.common.price_cache import parse_notice
from libs.common.settings import Settings
from services.monitor.decision import PriceView, fallback_line, trigger_line, trigger_tag, view_of
from services.monitor.outputs import Close, Line, Mark, Output, Sweep, SweepReport
from services.monitor.snapshot import Snapshot

SERVICE = "monitor"
# Events after which the record must be read again (the event does not carry it).
_READ_ON = frozenset({"levels_changed", "reopened", "close_failed", "monitored_again", "reduced"})
_GONE_ON = frozenset({"closing", "closed", "removed"})  # the position is no longer open at the event's rev
_SAFETY_NET_ON = frozenset({"opened", "levels_changed", "reopened", "reduced"})  # the GTT may need a change


@dataclass(slots=True)
class _Read:
    """A record read in flight: notice prices that arrived meanwhile, and whether an event may be newer."""

    prices: list[tuple[str, float, PriceSource]] = field(default_factory=list)
    again: bool = False


class Core:
    """The tick path, the sweep's checks and the close bookkeeping of one monitor."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._policy = FreshnessPolicy.from_settings(settings)
        self._feed = FeedLiveness(False, "not read yet")
        self._feed_live: bool | None = None
        self._watch: dict[str, Position] = {}  # open positions by symbol: all the tick path needs
        self._revs: dict[str, int] = {}  # rev of what is known of each symbol (open or not)
        self._inflight: dict[str, int] = {}  # symbol -> opened_rev of the position a close or reconcile acts on
        self._reads: dict[str, _Read] = {}
        self._settle_due: dict[str, float] = {}  # claim id of a close ended here unconfirmed -> when to settle it
        self._settled: dict[str, int] = {}  # symbol -> rev of the claim a reconcile here settled (older reads: stale)
        self._retry_on_new_token: set[str] = set()  # symbols whose close backoff a new access token lifts
        self._unmonitored: set[str] = set()
        self._fallback_logged_at: dict[str, float] = {}
        self._reported_bad: dict[str, str] = {}  # key -> the malformed-record error last reported
        self._silent: dict[str, str] = {}  # symbols the feed reported silent, with the reason (logged once)
        self.bad_notices = 0

    @property
    def watched(self) -> dict[str, Position]:
        """The open positions the tick path decides on (a copy)."""
        return dict(self._watch)

    def busy(self, position: Position) -> bool:
        """A close or reconcile of this position is in flight (one of an earlier position on the symbol, still
        finishing, holds nothing back: that one was closed in Redis before this one could open)."""
        return self._inflight.get(position.symbol) == position.opened_rev

    # --- what is known ---------------------------------------------------------------------------

    def _learn(self, symbol: str, rev: int, position: Position | None) -> bool:
        """Keep `position` (None: not open) as of `rev` unless a copy as new or newer is known."""
        if rev <= self._revs.get(symbol, -1):
            return False
        self._revs[symbol] = rev
        if position is not None and position.state is PositionState.OPEN:
            self._watch[symbol] = position
        else:
            self._watch.pop(symbol, None)
        return True

    def _forget(self, position: Position) -> None:
        """A close or reconcile of `position` settled it: stop watching it, unless the symbol holds a newer position."""
        known = self._watch.get(position.symbol)
        if known is not None and known.opened_rev != position.opened_rev:
            return
        self._watch.pop(position.symbol, None)
        self._revs[position.symbol] = max(self._revs.get(position.symbol, -1), position.rev)

    # --- events and reads ------------------------------------------------------------------------

    def event(self, payload: str) -> Output:
        """One `positions:events` message."""
        out = Output()
        try:
            event: dict[str, Any] = json.loads(payload)
            kind, symbol = str(event["kind"]), str(event["symbol"])
            rev = int(event["rev"]) if event.get("rev") is not None else None
        except (ValueError, KeyError, TypeError):
            return out
        out.wake_safety_net = kind in _SAFETY_NET_ON
        if kind in _GONE_ON:
            self._learn(symbol, rev if rev is not None else self._revs.get(symbol, 0) + 1, None)
        elif kind == "opened":
            position = _opened(symbol, event.get("position"))
            if position is not None:
                self._learn(symbol, position.rev, position)
            else:
                self._read(symbol, None, out)
        elif kind in _READ_ON:
            self._read(symbol, rev, out)
        return out

    def _read(self, symbol: str, rev: int | None, out: Output) -> None:
        if rev is not None and rev <= self._revs.get(symbol, -1):
            return  # already known as new as the event
        if symbol in self._reads:
            self._reads[symbol].again = True  # the read in flight may predate this change
            return
        self._reads[symbol] = _Read()
        out.reads.append(symbol)

    def read(self, symbol: str, rev: int, position: Position | None, now: float) -> Output:
        """A read asked for by `Output.reads` landed: the record (None: none) as of `rev` (its own, or the
        revision counter's when there is none). Notice prices that arrived meanwhile are decided on it."""
        out = Output()
        pending = self._reads.pop(symbol, _Read())
        self._learn(symbol, position.rev if position is not None else rev, position)
        known = self._watch.get(symbol)
        if known is not None:
            for ltp, as_of, source in pending.prices:  # in the order they arrived
                try:
                    view = PriceView(ltp_paise(ltp), source, max(0.0, now - as_of))
                except ValueError:
                    continue
                if self._evaluate(known, view, now, out):
                    break
        if pending.again:
            self._read(symbol, None, out)
        return out

    def read_failed(self, symbol: str) -> None:
        """The read could not be made (Redis down, malformed record): the sweep looks at the symbol."""
        self._reads.pop(symbol, None)

    # --- the tick path ---------------------------------------------------------------------------

    def notice(self, payload: str, now: float) -> Output:
        """Decide every watched symbol of one tick notice on the notice's price."""
        out = Output()
        try:
            as_of, prices, rest = parse_notice(payload)
        except (ValueError, KeyError, TypeError):
            self.bad_notices += 1
            return out
        # A notice is published only for prices just written: live from the WebSocket, or a REST poll's answer.
        source = PriceSource.REST if rest else PriceSource.LIVE
        for symbol, read in self._reads.items():  # decided as soon as its read lands
            if symbol in prices:
                read.prices.append((prices[symbol], as_of, source))
        watch = self._watch
        if not watch:
            return out
        if len(watch) < len(prices):
            hits = [(s, prices[s]) for s in watch if s in prices]
        else:
            hits = [(s, ltp) for s, ltp in prices.items() if s in watch]
        if not hits:
            return out
        age_s = max(0.0, now - as_of)
        live = source is PriceSource.LIVE
        for symbol, ltp in hits:
            try:
                price = ltp_paise(ltp)
            except ValueError:
                self.bad_notices += 1  # one absurd price skips only itself
                continue
            position = watch[symbol]
            if live and position.trigger(price) is None:
                continue  # what `_evaluate` would find (a live price logs nothing), without building its view
            self._evaluate(position, PriceView(price, source, age_s), now, out)
        out.tick_as_of = as_of
        return out

    def _evaluate(self, position: Position, view: PriceView, now: float, out: Output) -> bool:
        """Close when the price crosses a level and no close or backoff holds it; log as the guide does."""
        symbol = position.symbol
        trigger = position.trigger(view.price)
        if trigger is None:
            if view.fallback:
                last = self._fallback_logged_at.get(symbol)
                if last is None or now - last >= self._settings.monitor_fallback_log_interval_s:
                    self._fallback_logged_at[symbol] = now
                    out.lines.append(Line("INFO", fallback_line(symbol, view), "FALLBACK"))
            return False
        if self.busy(position):
            return False
        backoff = position.next_attempt_at is not None and now < position.next_attempt_at
        if backoff and symbol not in self._retry_on_new_token:
            return False
        self._retry_on_new_token.discard(symbol)
        if view.fallback:
            out.lines.append(Line("INFO", fallback_line(symbol, view), "FALLBACK"))
            self._fallback_logged_at[symbol] = now
        out.lines.append(Line("INFO", trigger_line(symbol, view, trigger), trigger_tag(trigger)))
        request = CloseRequest(
            symbol=symbol,
            reason=trigger.reason,
            closed_by=SERVICE,
            decision_price=view.price,
            price_source=view.source,
            price_age_s=round(view.age_s, 3),
            decided_at=now,
        )
        self._start(Close(position, request), out)
        return True

    def _start(self, close: Close, out: Output) -> None:
        self._inflight[close.position.symbol] = close.position.opened_rev
        out.closes.append(close)

    def safety_net_fired(self, position: Position, now: float) -> Output:
        """The broker's stop (Layer 0) fired: settle the position through the normal close path, whose disarm
        takes the GTT's fill as the close, or cancels an order a gap left open and sells the rest."""
        out = Output()
        if not self.busy(position):
            request = CloseRequest(
                symbol=position.symbol,
                reason=CloseReason.STOP_LOSS,
                closed_by=SERVICE,
                decision_price=None,
                price_source=PriceSource.BROKER,
                price_age_s=None,
                decided_at=now,
            )
            self._start(Close(position, request), out)
        return out

    def new_token(self) -> Output:
        """A new access token was stored: a close held back by its backoff (e.g. after a 401) is retried now."""
        out = Output()
        waiting = {s for s, p in self._watch.items() if p.next_attempt_at is not None}
        if waiting:
            out.lines.append(Line("INFO", f"New access token: retrying the close of {', '.join(sorted(waiting))} now"))
        self._retry_on_new_token = waiting
        return out

    # --- what became of a close or reconcile -----------------------------------------------------

    def ended(self, position: Position) -> None:
        """The close or reconcile of `position` started here has ended (whatever its outcome)."""
        if self._inflight.get(position.symbol) == position.opened_rev:
            del self._inflight[position.symbol]

    def settled(self, position: Position) -> None:
        """`position` is closed (here or elsewhere) or its close is left to the reconcile: stop watching it."""
        self._forget(position)

    def held_back(self, position: Position, until: float, error: str) -> None:
        """Its close failed and it stays open: no new close before `until` (unless a newer copy says otherwise)."""
        known = self._watch.get(position.symbol)
        if known is not None and known.rev == position.rev:
            update = {"next_attempt_at": until, "close_attempts": position.close_attempts + 1, "last_error": error}
            self._watch[position.symbol] = position.model_copy(update=update)

    def unconfirmed(self, position: Position, claim_id: str, settle_at: float) -> None:
        """Its close ended with an unknown outcome: it stays closing and is settled with the broker at `settle_at`
        (the closer has ended, so nothing else is in flight on its claim: no need to wait until it is stuck)."""
        self._settle_due[claim_id] = settle_at
        self._forget(position)

    def reconciled(self, position: Position, *, closed: bool) -> None:
        """The reconcile of the `closing` record `position` settled it: closed, or reopened (closed False)."""
        self._settle_due.pop(position.claim_id, None)
        self._settled[position.symbol] = position.rev
        if closed:
            self._forget(position)

    def reconcile_failed(self, position: Position, now: float) -> None:
        if position.claim_id in self._settle_due:
            self._settle_due[position.claim_id] = now + self._settings.close_retry_max_s

    def stuck(self, position: Position, now: float) -> bool:
        """A `closing` position no closer of ours works on, whose claim is old enough (or due) to settle."""
        if self.busy(position) or position.rev <= self._settled.get(position.symbol, -1):
            return False  # in flight here, or a read from before a reconcile here settled it
        due = self._settle_due.get(position.claim_id)
        if due is not None and now >= due:
            return True
        claimed_at = position.claimed_at
        return claimed_at is None or now - claimed_at >= self._settings.monitor_stuck_close_s

    def reconcile(self, position: Position, out: Output) -> None:
        self._inflight[position.symbol] = position.opened_rev
        out.reconciles.append(position)

    # --- the sweep -------------------------------------------------------------------------------

    def sweep(self, feed: FeedLiveness) -> Sweep:
        """Begin a sweep with the feed's liveness just read; then `check_slice()` each part of its read and
        `end_sweep()` it. Sweeps may overlap: each has its own `Sweep`."""
        self._feed = feed
        sweep = Sweep(SweepReport(feed_live=feed.live))
        self._note_feed(feed.live, sweep.out)
        return sweep

    def check_slice(self, sweep: Sweep, part: Snapshot, now: float) -> Output:
        """Check one slice of open positions on their cached prices; returns what to do now."""
        out, sweep.out = sweep.out, Output()
        sweep.rev = part.rev
        for symbol, item in part.positions.items():
            sweep.seen.add(symbol)
            if isinstance(item, MalformedRecord):
                sweep.report.malformed += 1
                if self._report_bad_once(f"position:{symbol}", str(item), out):
                    out.malformed.append((symbol, str(item)))
                continue
            self._reported_bad.pop(f"position:{symbol}", None)
            self._learn(symbol, item.rev, item)
            if item.state is PositionState.CLOSING:
                if self.stuck(item, now):
                    sweep.report.reconciling += 1
                    self.reconcile(item, out)
                continue
            known = self._watch.get(symbol)  # this copy, or a newer one an event brought meanwhile
            if item.state is PositionState.OPEN and known is not None:
                sweep.report.checked += 1
                self._check(known, part.prices.get(symbol), sweep.report, now, out)
        return out

    def end_sweep(self, sweep: Sweep) -> list[Position]:
        """Forget symbols the sweep's read found not open, unless what is known of them is newer than that read.
        Returns the open positions watched now."""
        if sweep.rev is not None:
            # A set difference, not a pass over every symbol known: 10,000 positions held the loop for ms.
            for symbol in [s for s in self._revs.keys() - sweep.seen if self._revs[s] <= sweep.rev]:
                del self._revs[symbol]
                self._watch.pop(symbol, None)
                self._settled.pop(symbol, None)
        return list(self._watch.values())

    def _note_feed(self, live: bool, out: Output) -> None:
        if live == self._feed_live:
            return
        if live:
            out.lines.append(Line("INFO", "Feed is live: checking SL/TP on live prices"))
            self._fallback_logged_at.clear()  # the next outage logs its fallback prices at once
        else:
            out.lines.append(Line("WARNING", "Feed is not live: checking SL/TP on cached prices"))
        self._feed_live = live

    def _check(
        self,
        position: Position,
        cached: PriceTruth | MalformedRecord | None,
        report: SweepReport,
        now: float,
        out: Output,
    ) -> None:
        symbol = position.symbol
        if isinstance(cached, MalformedRecord):
            report.malformed += 1
            self._report_bad_once(f"price:{symbol}", str(cached), out)
            return
        self._reported_bad.pop(f"price:{symbol}", None)
        view = None
        if cached is not None:
            view = view_of(cached.ltp, self._policy.judge(cached, now, self._feed))
            self._note_silent(symbol, cached.silent, out)
        if view is None:
            # A position opened a moment ago on a live feed is waiting for its first tick, not unmonitored.
            if report.feed_live and now - position.opened_at < self._settings.price_stale_after_s:
                return
            report.unmonitored += 1
            self._lost_price(position, now, out)
            return
        if symbol in self._unmonitored or position.unmonitored_since is not None:
            self._unmonitored.discard(symbol)
            if position.unmonitored_since is not None:
                out.lines.append(Line("INFO", f"Monitoring {symbol} again: {view.source.value} price available"))
                out.marks.append(Mark(symbol, None, view.source))
        if self._evaluate(position, view, now, out):
            report.triggered += 1

    def _note_silent(self, symbol: str, reason: str | None, out: Output) -> None:
        """Say once when the feed finds a guarded instrument silent (its price ages from its last tick)."""
        if reason is None:
            if self._silent.pop(symbol, None) is not None:
                out.lines.append(Line("INFO", f"{symbol} is ticking again"))
        elif symbol not in self._silent:
            self._silent[symbol] = reason
            message = f"{symbol}: {reason}; checking SL/TP on its cached price with its true age"
            out.lines.append(Line("WARNING", message))

    def _lost_price(self, position: Position, now: float, out: Output) -> None:
        """Layer 3: say it once per outage per position, record it on the position and raise an alert event."""
        symbol = position.symbol
        if symbol in self._unmonitored:
            return
        self._unmonitored.add(symbol)
        if position.unmonitored_since is not None:  # already reported (by this monitor before a restart)
            return
        out.lines.append(Line("INFO", f"Price cache expired for {symbol}", "FALLBACK"))
        out.lines.append(Line("WARNING", f"Can't monitor {symbol} - no fresh prices"))
        out.marks.append(Mark(symbol, now))

    def _report_bad_once(self, key: str, error: str, out: Output) -> bool:
        if self._reported_bad.get(key) == error:
            return False
        self._reported_bad[key] = error
        one_line = "; ".join(part.strip() for part in error.splitlines() if part.strip())  # one greppable line
        out.lines.append(Line("ERROR", f"Skipping malformed record {key}: {one_line[:300]}"))
        return True


def _opened(symbol: str, data: Any) -> Position | None:
    """The record an "opened" event carries (rupees as numbers), or None when it carries none usable."""
    if not isinstance(data, dict):
        return None
    try:
        fields = {k: v for k, v in data.items() if v is not None}
        for name in ("entry_price", "stop_loss", "take_profit"):
            if name in fields:
                fields[name] = to_paise(fields[name])
        position = Position.model_validate(fields)
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return None
    if position.symbol != symbol or position.state is not PositionState.OPEN:
        return None
    return position
