"""Fault windows set through `POST /sim/faults`, and the single-use feed authorization codes.

Fault windows run on the real monotonic clock: they model the network, which does not follow the
injected market clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Literal

FaultKind = Literal[
    "drop", "close", "mute", "auth", "rest_down", "reply_delay",
    "partial_fill", "slow_fill", "reply_lost", "reject", "ip_block",
]  # fmt: skip
FAULT_KINDS: tuple[FaultKind, ...] = (
    "drop", "close", "mute", "auth", "rest_down", "reply_delay",
    "partial_fill", "slow_fill", "reply_lost", "reject", "ip_block",
)  # fmt: skip
CODE_TTL_S = 300.0


class Faults:
    """Which faults are active now and until when."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self.close_code = 1000
        self.fill_ratio = 0.5  # partial_fill: the share of an order that fills
        self.fill_delay_s = 2.0  # slow_fill: how long an order rests open
        self.reject_message = "Order rejected by RMS (simulated)"
        self.reply_delay_s = 0.0  # reply_delay: an order is filled at once, its answer held this long
        self._replies_released = asyncio.Event()
        self.counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._uses_left: dict[str, int] = {}  # faults limited to their first N orders

    def limit(self, kind: FaultKind, orders: int) -> None:
        """Apply `kind` to only the next `orders` orders of its window (0: every order)."""
        if orders:
            self._uses_left[kind] = orders
        else:
            self._uses_left.pop(kind, None)

    def take(self, kind: FaultKind) -> bool:
        """Use the fault on one order: False once its order limit is used up."""
        left = self._uses_left.get(kind)
        if left is None:
            return True
        if left <= 0:
            return False
        self._uses_left[kind] = left - 1
        return True

    def start(self, kind: FaultKind, duration_s: float) -> None:
        """Make `kind` active for `duration_s` seconds from now (0 = a one-off event, no window).
        Order faults (partial_fill, slow_fill, reply_lost, reject, ip_block) apply to orders placed in the window.
        """
        self._until[kind] = time.monotonic() + max(duration_s, 0.0)
        self.counts[kind] += 1

    def active(self, kind: FaultKind) -> bool:
        until = self._until.get(kind)
        return until is not None and time.monotonic() < until

    def remaining_s(self, kind: FaultKind) -> float:
        return max(0.0, self._until.get(kind, 0.0) - time.monotonic())

    async def hold_reply(self) -> None:
        """Hold an order's answer for `reply_delay_s`, or until the reply_delay window ends or is replaced."""
        wait_s = min(self.reply_delay_s, self.remaining_s("reply_delay"))
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._replies_released.wait()

    def release_replies(self) -> None:
        """Send every held answer now (a new reply_delay window, or a reset)."""
        self._replies_released.set()
        self._replies_released = asyncio.Event()

    def clear(self) -> None:
        self._until.clear()
        self._uses_left.clear()
        self.close_code = 1000
        self.reply_delay_s = 0.0
        self.release_replies()

    def snapshot(self) -> dict[str, float]:
        """Active fault kinds and the seconds left in each."""
        return {kind: round(self.remaining_s(kind), 3) for kind in FAULT_KINDS if self.active(kind)}


class AuthCodes:
    """One-time `code`s of authorized feed URIs: issued by REST, consumed by the feeder."""

    def __init__(self) -> None:
        self._codes: dict[str, float] = {}

    def issue(self) -> tuple[str, str]:
        """A new (requestId, code) pair; the code is valid for one connection within CODE_TTL_S."""
        now = time.monotonic()
        self._codes = {c: t for c, t in self._codes.items() if now - t < CODE_TTL_S}
        code = str(uuid.uuid4())
        self._codes[code] = now
        return str(uuid.uuid4()), code

    def consume(self, code: str) -> bool:
        """True (once) for a code issued within CODE_TTL_S."""
        issued = self._codes.pop(code, None)
        return issued is not None and time.monotonic() - issued < CODE_TTL_S

    def clear(self) -> None:
        self._codes.clear()
