"""Logging for every service: one `setup_logging` call, the guide's tags, no secrets.

A console line reads ``2026-01-07 11:24:16.123 [VERBOSE] Reconnecting (attempt 1/10)... | feed:websocket``:
time, the guide's tag, the message, then the service and module (so ``grep websocket`` finds the feed's
WebSocket lines). Tag a line with ``log.bind(tag="DNS")`` or the helpers below; untagged lines take their
level's name (INFO, SUCCESS, WARNING, ERROR). Every line passes a redactor that replaces each configured
secret and any ``Bearer <token>`` before it is written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Logger, Message, Record

    from libs.common.settings import Settings

TAGS = ("DNS", "FALLBACK", "SL", "TP", "SAFETY", "VERBOSE", "SUCCESS", "WARNING", "ERROR", "INFO", "DEBUG")
REDACTED = "***"
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)
_CODE_PARAM = re.compile(r"([?&]code=)[^&\s\"']+")


class Redactor:
    """Removes secrets from text. Values shorter than 4 characters are ignored (too common to scrub)."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str) -> None:
        """Also scrub `secret` from now on (a token learnt at runtime)."""
        if len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _BEARER.sub(r"\1" + REDACTED, text)
        return _CODE_PARAM.sub(r"\1" + REDACTED, text)


def _tag_of(record: Record) -> str:
    tag = record["extra"].get("tag")
    return str(tag) if tag else record["level"].name


def _text_line(record: Record, service: str) -> str:
    module = record["name"] or ""
    short = module.rsplit(".", 1)[-1] if module.startswith("services.") else module
    line = (
        f"{record['time'].strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} [{_tag_of(record)}] {record['message']}"
        f" | {service}:{short}\n"
    )
    if record["exception"] is not None:
        exc_type, exc_value, _ = record["exception"]
        line += f"    {getattr(exc_type, '__name__', 'Exception')}: {exc_value}\n"
    return line


def _json_line(record: Record, service: str) -> str:
    payload: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "service": service,
        "tag": _tag_of(record),
        "level": record["level"].name,
        "module": record["name"],
        "message": record["message"],
    }
    if record["exception"] is not None:
        payload["exception"] = repr(record["exception"].value)
    return json.dumps(payload, ensure_ascii=False) + "\n"


class _Sink:
    """Formats, redacts and writes records to a stream; closes it on removal when it owns it."""

    def __init__(self, stream: TextIO, service: str, fmt: str, redact: Redactor, *, owned: bool = False) -> None:
        self._stream = stream
        self._service = service
        self._json = fmt == "json"
        self._redact = redact
        self._owned = owned

    def write(self, message: Message) -> None:
        record = message.record
        line = _json_line(record, self._service) if self._json else _text_line(record, self._service)
        self._stream.write(self._redact(line))
        self._stream.flush()

    def stop(self) -> None:  # loguru calls this from logger.remove()
        if self._owned:
            self._stream.close()


_active = Redactor([])


def redact_secret(secret: str) -> None:
    """Scrub `secret` from every later log line of this process (tokens stored at runtime go through here)."""
    _active.add(secret)


def setup_logging(service: str, settings: Settings, *, stream: TextIO | None = None) -> Redactor:
    """Send this process's logs to stdout (and `LOG_DIR/<service>.log` when set), redacted.

    Returns the redactor so callers can scrub other text they show (error bodies, responses).
    """
    global _active
    redact = Redactor(settings.secrets())
    _active = redact
    logger.remove()
    logger.add(
        _Sink(stream or sys.stdout, service, settings.log_format, redact),
        level=settings.log_level,
        format="{message}",
        backtrace=False,
        diagnose=False,
    )
    if settings.log_dir:
        path = Path(settings.log_dir)
        path.mkdir(parents=True, exist_ok=True)
        log_file = (path / f"{service}.log").open("a", encoding="utf-8", buffering=1)
        logger.add(
            _Sink(log_file, service, settings.log_format, redact, owned=True),
            level=settings.log_level,
            format="{message}",
            backtrace=False,
            diagnose=False,
        )
    return redact


def tagged(tag: str) -> Logger:
    """A logger whose lines carry the guide's `[tag]`, e.g. ``tagged("DNS").info(...)``."""
    return logger.bind(tag=tag)
