"""Sending a notification to one of the `ALERT_URLS` through apprise (Telegram, Slack, e-mail, webhooks, ...).

Each URL is its own `Target`, so a caller knows which ones a message reached. A target is named by its
`label`: apprise's privacy form of the URL (passwords and tokens masked), never the URL itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

import apprise
from pydantic import SecretStr

Kind = Literal["info", "success", "warning", "failure"]

# apprise logs through the standard logging module; the outcome is reported by the caller (redacted).
logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)


class InvalidTarget(ValueError):
    """An `ALERT_URLS` entry apprise does not understand. The message names it by position only."""


@dataclass(frozen=True, slots=True)
class Target:
    index: int  # position in ALERT_URLS, from 0
    label: str
    key: str  # a digest of the URL: names the target in Redis, stable when ALERT_URLS is reordered
    _apprise: apprise.Apprise


@dataclass(frozen=True, slots=True)
class Outcome:
    sent: bool
    error: str = ""


def targets(urls: list[SecretStr]) -> list[Target]:
    """One target per URL. Raises InvalidTarget for a URL apprise cannot use."""
    return [target(index, url) for index, url in enumerate(urls)]


def target(index: int, url: SecretStr) -> Target:
    """The target of `ALERT_URLS[index]`. Raises InvalidTarget when apprise cannot use the URL."""
    sender = apprise.Apprise()
    if not sender.add(url.get_secret_value()):
        raise InvalidTarget(f"ALERT_URLS entry {index + 1} is not a valid apprise URL")
    private_url = str(next(iter(sender)).url(privacy=True))  # type: ignore[no-untyped-call]
    digest = hashlib.sha256(url.get_secret_value().encode()).hexdigest()[:16]
    return Target(index, private_url.split("?", 1)[0].rstrip("/"), digest, sender)


def _notify(target: Target, title: str, body: str, kind: Kind) -> Outcome:
    with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
        sent = bool(target._apprise.notify(body=body, title=title, notify_type=apprise.NotifyType(kind)))
        logged = captured.getvalue()
    if sent:
        return Outcome(True)
    reason = " ".join(line.split(" - ", 2)[-1] for line in str(logged).splitlines() if line.strip())
    return Outcome(False, reason[:300] or "not sent")


async def send(target: Target, title: str, body: str, kind: Kind = "info") -> Outcome:
    """Send one message to `target` (apprise is blocking: it runs in a worker thread). Never raises."""
    try:
        return await asyncio.to_thread(_notify, target, title, body, kind)
    except Exception as exc:  # a plugin bug must not end the caller's loop
        return Outcome(False, type(exc).__name__)
