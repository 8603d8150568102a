"""Tokens without downtime, end to end: real processes, tokens issued by the simulator with real lifetimes.

- The access token expires while a position is open: the feed streams on on the analytics token, `/status`
  says the order path is down, the stop-loss crossing waits (position open, visible) and fires within seconds
  of a hot swap through the api, with one order.
- Without an analytics token the feed meets the expired token, says so once and waits quietly; `token set`
  (stdin) brings it back; the notifier refuses another client's token and takes the simulator's approved one.
- No token ever appears in a log file, a response body or the process list.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from libs.common.models import PositionState
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

KEY = "e2e-credentials-key-6c0ffee"
CLIENT = {"UPSTOX_CLIENT_ID": "client-e2e", "UPSTOX_CLIENT_SECRET": "client-e2e-secret"}


async def sim_token(stack: Stack, kind: str, **kw: Any) -> str:
    return str((await stack.sim("POST", "/sim/tokens", json={"kind": kind, **kw}))["access_token"])


def upstox_env(stack: Stack, access: str, analytics: str = "") -> dict[str, str]:
    env = {"UPSTOX_ACCESS_TOKEN": access, "UPSTOX_API_BASE": stack.sim_url, "UPSTOX_ORDER_BASE": stack.sim_url}
    return {**env, "UPSTOX_ANALYTICS_TOKEN": analytics} if analytics else env


async def access_state(stack: Stack) -> str:
    return str((await stack.status())["credentials"][0]["state"])


def assert_no_token_leaked(stack: Stack, tokens: list[str], responses: list[str]) -> None:
    """Not in any response, nor the process list, nor any file the stack wrote: logs, Redis's AOF (at rest)."""
    texts = {"responses": "\n".join(responses)}
    texts["process list"] = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert texts["process list"].count("services.") >= 3  # the services are in it
    files = [path for path in stack.tmp.rglob("*") if path.is_file()]
    assert any("appendonly" in path.name for path in files) and any(path.suffix == ".log" for path in files)
    for path in files:
        texts[str(path.relative_to(stack.tmp))] = path.read_bytes().decode("utf-8", errors="replace")
    aof = "".join(text for where, text in texts.items() if "appendonly" in where)
    assert "auth:access-token" in aof  # the swapped token is on disk, as ciphertext only
    for where, text in texts.items():
        for token in tokens:
            assert token not in text, f"a token appears in {where}"


async def test_access_token_expires_with_a_position_open_and_a_hot_swap_fires_the_stop_loss(tmp_path: Path) -> None:
    async with Stack(tmp_path, CREDENTIALS_KEY=KEY, TOKEN_EXPIRY_WARN_S="3") as stack:
        await stack.start("sim")
        analytics = await sim_token(stack, "analytics")
        access = await sim_token(stack, "access")
        await stack.start("feed", "monitor", "api", env=upstox_env(stack, access, analytics))
        await stack.sim("POST", "/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.wait_connected(True)
        responses: list[str] = []

        # A token that lives 5 s, swapped in while the position is open: it expires under the guard.
        short = await sim_token(stack, "access", expires_in_s=5)
        swap = await stack.api("POST", "/api/v1/auth/token", json={"access_token": short})
        assert swap.status_code == 200, swap.text
        responses.append(swap.text)
        await stack.wait_log("api", "[WARNING] The Upstox access token expires at", timeout_s=10)
        await stack.wait_log("api", "[WARNING] The Upstox access token expired at", timeout_s=10)
        status = await stack.status()
        responses.append(str(status))
        assert [c["kind"] for c in status["credentials"]] == ["access", "analytics"]
        assert status["credentials"][0]["state"] == "expired" and status["credentials"][0]["source"] == "api"
        assert status["credentials"][1]["state"] == "valid"
        assert status["orders"]["blocked"] is True and "expired" in status["orders"]["reason"]
        # The api says it in the log, then publishes its event: wait for the event rather than race it.
        events = await eventually(lambda: _events_with(stack, "token_expired"), timeout_s=5)
        assert events["token_expiring"]["token"] == "access"
        assert "prices still stream on the analytics token" in events["token_expired"]["effect"]

        # The feed streams on, on the analytics token.
        await stack.set_price("BOSCHLTD", 710.0)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "710.00"), timeout_s=10)
        assert (await stack.health())["websocket"]["connected"] is True

        # The stop-loss crossing waits: the broker refuses the dead token, the position stays open and visible.
        await stack.set_price("BOSCHLTD", 690.0)
        await stack.wait_log("monitor", "[SL] BOSCHLTD", timeout_s=10)
        await stack.wait_log("monitor", "Close of BOSCHLTD failed", timeout_s=10)
        assert "UDAPI100050" in (await stack.wait_log("monitor", "Close of BOSCHLTD failed"))
        # Each retry claims the position for its round trip to the broker ("closing" for that moment); between the
        # refused tries it is open again and shown so (one read could land inside a retry).
        responses.append(await eventually(lambda: _shown_open(stack, "BOSCHLTD"), timeout_s=5))
        assert [o for o in await stack.orders("BOSCHLTD") if o["transaction_type"] == "SELL"] == []

        # A fresh token through the api: the stop-loss fires within seconds, with one order.
        fresh = await sim_token(stack, "access")
        swapped_at = time.monotonic()
        swap = await stack.api("POST", "/api/v1/auth/token", json={"access_token": fresh})
        assert swap.status_code == 200, swap.text
        responses.append(swap.text)
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=10)
        assert time.monotonic() - swapped_at < 5
        sells = [o for o in await stack.orders("BOSCHLTD") if o["transaction_type"] == "SELL"]
        assert len(sells) == 1 and sells[0]["status"] == "complete"
        assert len(await stack.closes()) == 1
        status = await stack.status()
        responses.append(str(status))
        assert status["credentials"][0]["state"] == "valid" and status["orders"]["blocked"] is False
        assert_no_token_leaked(stack, [access, analytics, short, fresh], responses)


async def test_feed_waits_quietly_for_a_new_token_then_token_set_and_the_notifier(tmp_path: Path) -> None:
    async with Stack(tmp_path, CREDENTIALS_KEY=KEY, AUTH_RETRY_DELAY_S="0.3", **CLIENT) as stack:
        stack.env["SIM_NOTIFIER_URL"] = f"{stack.api_url}/api/v1/auth/notifier"
        await stack.start("sim")
        short = await sim_token(stack, "access", expires_in_s=6)
        await stack.start("feed", "api", env=upstox_env(stack, short))
        await stack.wait_connected(True)
        await eventually(lambda: _access_state_is(stack, "expired"), timeout_s=15)

        # The connection ends; the reconnection meets the dead token: one line, then quiet (no 0.3 s churn).
        mark = stack.mark("feed")
        await stack.fault("close", 0)
        await stack.wait_log("feed", "[WARNING] The access token expired at", since=mark, timeout_s=10)
        await eventually(lambda: _feed_token_ok_is(stack, False), timeout_s=5)

        fresh = await sim_token(stack, "access")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.api",
            "token",
            "set",
            **stack.place_of("api"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(f"{fresh}\n".encode()), 60)
        assert proc.returncode == 0, out.decode()
        await stack.wait_log("feed", "[SUCCESS] Reconnection successful!", since=mark, timeout_s=10)
        await stack.wait_connected(True)
        quiet = stack.lines("feed", mark)
        assert sum("The access token expired at" in line for line in quiet) == 1
        assert not [line for line in quiet if "token rejected" in line]
        assert sum("Reconnecting (attempt" in line for line in quiet) <= 2  # the close, then the new token
        assert (await stack.status())["credentials"][0]["source"] == "cli"

        # The notifier: another client's token is refused and changes nothing; the approved request is taken.
        other = await sim_token(stack, "access")
        note = {"client_id": "someone-else", "user_id": "SIM001", "access_token": other, "message_type": "access_token"}
        refused = await stack.api("POST", "/api/v1/auth/notifier", json=note)
        assert refused.status_code == 403
        assert (await stack.status())["credentials"][0]["source"] == "cli"
        request = {"client_secret": CLIENT["UPSTOX_CLIENT_SECRET"]}
        await stack.sim("POST", f"/v3/login/auth/token/request/{CLIENT['UPSTOX_CLIENT_ID']}", json=request)
        await eventually(lambda: _source_is(stack, "notifier"), timeout_s=10)
        await stack.wait_log("api", "Access token replaced (via notifier", timeout_s=5)
        assert_no_token_leaked(
            stack, [short, fresh, other, CLIENT["UPSTOX_CLIENT_SECRET"]], [refused.text, out.decode()]
        )


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def _events_with(stack: Stack, kind: str) -> dict[str, dict[str, Any]] | None:
    """Recent events by kind (of a kind seen twice, its oldest), once one of `kind` is among them."""
    events = {e["kind"]: e for e in await stack.events()}
    return events if kind in events else None


async def _shown_open(stack: Stack, symbol: str) -> str | None:
    """The api's answer for `symbol` when it shows the position open."""
    shown = await stack.api("GET", f"/api/v1/positions/{symbol}")
    return shown.text if shown.json()["state"] == "open" else None


async def _state_is(stack: Stack, symbol: str, state: PositionState) -> bool:
    return (await stack.position(symbol)).state is state


async def _access_state_is(stack: Stack, state: str) -> bool:
    return await access_state(stack) == state


async def _source_is(stack: Stack, source: str) -> bool:
    return (await stack.status())["credentials"][0]["source"] == source


async def _feed_token_ok_is(stack: Stack, ok: bool) -> bool:
    return (await stack.feed_status()).token_ok is ok
