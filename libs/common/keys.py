"""The Redis contract: every key and channel name the services use, defined once.

No service builds a key string itself. The README lists these names for `redis-cli` users.

Keys
  price:SYMBOL              hash   last price of SYMBOL (see `PRICE_FIELDS`); expires 300 s after the last write
  prices:index              zset   SYMBOL -> epoch s the price was last known current (count/list without SCAN)
  feed:status               hash   feed connection state, counters, last message time, DNS resolver in use
  feed:subscriptions        hash   SYMBOL -> instrument key the feed must subscribe besides its watchlist
  heartbeat:SERVICE         string epoch s of the service's last beat (any instance; the feed: its leader); TTL
  heartbeat:SERVICE:INSTANCE string epoch s of one instance's last beat; expires after HEARTBEAT_TTL_S
  instances:SERVICE         zset   INSTANCE -> epoch s of its last beat (lists instances without SCAN)
  feed:lease                hash   the feed leader's lease: instance, holder, token, acquired_at, renewed_at; PEXPIRE
  feed:lease:counter        string the last fencing number handed out with a feed lease
  replication:probe         string a counter a close increments so its WAIT covers its claim (replication.py)
  position:SYMBOL           hash   the position on SYMBOL (open -> closing -> closed); `net_*` fields: its safety net
  positions:open            set    symbols whose position is open or closing
  positions:rev             string the last position revision handed out (every position script takes the next)
  positions:closed          list   journal of closes, newest first (JSON close records), at most JOURNAL_MAXLEN
  positions:closed:archive  stream older closes moved out of the journal, oldest first (field `record`)
  events                    stream every event that matters to a person: positions, closes, feed states (capped)
  idempotency:KEY           string the first result of an emergency close sent with that Idempotency-Key
  services:status           hash   per-service notes (e.g. the monitor's last broker error)
  auth:access-token         string the hot-swapped access token, encrypted (Fernet, CREDENTIALS_KEY); never plain
  broker:positions          string JSON snapshot of the broker's day positions (as_of, holdings), last good read
  broker:unguarded          string JSON list of broker positions no guard record covers (the reconcile's finding)
  orders:blocked            hash   set while order calls are refused for the static IP (reason, since)
  alerts:outbox             stream alert messages waiting to be sent (consumer group `alerts`)
  alerts:conditions         hash   condition id -> JSON state of the alert condition (active, last sent, folded)
  alerts:sent:ID            set    digests of the ALERT_URLS an outbox message already reached (while retrying)

Channels
  ticks                     one notice per feed frame: the symbols (and prices) just written
  feed:status:changes       the feed's state transitions
  feed:subscription-requests  "sub SYMBOL KEY" / "unsub SYMBOL" asks the feed to (un)subscribe now
  positions:events          position lifecycle events (opened, closing, closed, close_failed, unmonitored,
                            reduced, removed, reopened)
  auth:changes              "access": a new access token was stored (the notice carries no token)
"""

from __future__ import annotations

from typing import Final

PRICE_PREFIX: Final = "price:"
PRICE_INDEX: Final = "prices:index"
FEED_STATUS: Final = "feed:status"
FEED_SUBSCRIPTIONS: Final = "feed:subscriptions"
HEARTBEAT_PREFIX: Final = "heartbeat:"
INSTANCES_PREFIX: Final = "instances:"
FEED_LEASE: Final = "feed:lease"
FEED_LEASE_COUNTER: Final = "feed:lease:counter"
SAFETY_NET_LEASE: Final = "safety_net:lease"  # the monitor instance that keeps the GTTs (libs/common/feed_lease.py)
SAFETY_NET_LEASE_COUNTER: Final = "safety_net:lease:counter"
REPLICATION_PROBE: Final = "replication:probe"
POSITION_PREFIX: Final = "position:"
OPEN_POSITIONS: Final = "positions:open"
POSITIONS_REV: Final = "positions:rev"
CLOSED_JOURNAL: Final = "positions:closed"
CLOSED_ARCHIVE: Final = "positions:closed:archive"
EVENTS_STREAM: Final = "events"
IDEMPOTENCY_PREFIX: Final = "idempotency:"
SERVICES_STATUS: Final = "services:status"
ACCESS_TOKEN: Final = "auth:access-token"  # noqa: S105 (a key name, not a secret)
BROKER_POSITIONS: Final = "broker:positions"
BROKER_UNGUARDED: Final = "broker:unguarded"
ORDERS_BLOCKED: Final = "orders:blocked"
ALERTS_OUTBOX: Final = "alerts:outbox"
ALERT_CONDITIONS: Final = "alerts:conditions"
ALERT_SENT_PREFIX: Final = "alerts:sent:"
# The consumer group the alerts service reads `events` and `alerts:outbox` with.
ALERTS_GROUP: Final = "alerts"

TICKS_CHANNEL: Final = "ticks"
FEED_STATUS_CHANNEL: Final = "feed:status:changes"
SUBSCRIPTION_REQUESTS_CHANNEL: Final = "feed:subscription-requests"
POSITION_EVENTS_CHANNEL: Final = "positions:events"
CREDENTIALS_CHANNEL: Final = "auth:changes"

# Fields of a price:SYMBOL hash. Prices are rupee strings ("575.00") so `HGETALL` reads naturally.
# `received_at` is the arrival of the last real tick; `as_of` also moves when the feed vouches for a quiet symbol.
# `silent_since`/`silent_reason`: the feed found the instrument silent while its segment trades (see freshness).
# `rest_at`: when the REST LTP poll last wrote the price (its source is `rest` while `rest_at` >= `as_of`).
PRICE_FIELDS: Final = (
    "ltp",
    "instrument_key",
    "ltt_ms",
    "cp",
    "as_of",
    "received_at",
    "silent_since",
    "silent_reason",
    "rest_at",
)

SERVICES: Final = ("feed", "monitor", "api", "sim", "alerts")


def price(symbol: str) -> str:
    """Key of the price hash of `symbol`, e.g. ``price:BOSCHLTD``."""
    return PRICE_PREFIX + symbol


def position(symbol: str) -> str:
    """Key of the position hash of `symbol`, e.g. ``position:BOSCHLTD``."""
    return POSITION_PREFIX + symbol


def heartbeat(service: str, instance: str | None = None) -> str:
    """Key of a service's heartbeat, e.g. ``heartbeat:feed``, or of one instance, ``heartbeat:monitor:host-a``."""
    return HEARTBEAT_PREFIX + service + (f":{instance}" if instance is not None else "")


def instances(service: str) -> str:
    """Key of the zset of a service's instances and their last beats, e.g. ``instances:monitor``."""
    return INSTANCES_PREFIX + service


def idempotency(key: str) -> str:
    """Key holding the first result of an emergency close sent with Idempotency-Key `key`."""
    return IDEMPOTENCY_PREFIX + key


def alert_sent(entry_id: str) -> str:
    """Key of the set of ALERT_URLS (digests) that outbox message `entry_id` already reached."""
    return ALERT_SENT_PREFIX + entry_id


def all_names() -> dict[str, str]:
    """Every fixed key and channel name (for the README check and for people)."""
    return {name: value for name, value in globals().items() if name.isupper() and isinstance(value, str)}
