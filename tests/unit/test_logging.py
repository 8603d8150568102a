from __future__ import annotations

import io
import json
import re

from loguru import logger

from libs.common.logging import setup_logging, tagged
from libs.common.settings import Settings

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[(?P<tag>[A-Z]+)\] (?P<msg>.*) \| (?P<where>\S+)$")


def capture(**kw: object) -> tuple[io.StringIO, Settings]:
    out = io.StringIO()
    settings = Settings(_env_file=None, **kw)  # type: ignore[call-arg, arg-type]
    setup_logging("feed", settings, stream=out)
    return out, settings


def test_lines_start_with_time_then_tag_then_message() -> None:
    out, _ = capture()
    tagged("VERBOSE").info("Reconnecting (attempt 1/10)...")
    tagged("DNS").info("✅ Resolved api.upstox.com → 10.0.0.1 (via Google DNS)")
    logger.warning("WebSocket connection closed")
    logger.success("Reconnection successful!")
    lines = out.getvalue().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [m["tag"] for m in parsed if m] == ["VERBOSE", "DNS", "WARNING", "SUCCESS"]
    assert parsed[0] and parsed[0]["msg"] == "Reconnecting (attempt 1/10)..."
    assert "[VERBOSE] Reconnecting (attempt 1/10)..." in lines[0]


def test_module_name_is_on_the_line() -> None:
    out, _ = capture()
    logger.patch(lambda r: r.update(name="services.feed.websocket")).info("connected")
    assert out.getvalue().rstrip().endswith("| feed:websocket")


def test_the_access_token_never_reaches_a_log_line(tmp_path: object) -> None:
    out, _ = capture(upstox_access_token="eyJsecret-token-value", log_dir=str(tmp_path))
    logger.info("token is eyJsecret-token-value")
    logger.info("header Authorization: Bearer some-other-token")
    logger.info("uri wss://x/feeds?requestId=1&code=one-time-code")
    try:
        raise RuntimeError("failed with eyJsecret-token-value")
    except RuntimeError:
        logger.exception("boom")
    text = out.getvalue()
    file_text = (tmp_path / "feed.log").read_text()  # type: ignore[operator]
    for body in (text, file_text):
        assert "eyJsecret-token-value" not in body
        assert "some-other-token" not in body
        assert "one-time-code" not in body
        assert body.count("***") >= 4


def test_json_lines() -> None:
    out, _ = capture(log_format="json", upstox_access_token="tok-abcdef")
    tagged("FALLBACK").info("Using stale price tok-abcdef")
    record = json.loads(out.getvalue())
    assert record["tag"] == "FALLBACK"
    assert record["service"] == "feed"
    assert record["message"] == "Using stale price ***"
