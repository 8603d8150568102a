"""`make demo-blackout`: Layer 0 on the simulator. The whole guard goes dark; the broker's stop still fires.

Positions are opened with their safety nets (a stop-loss GTT at the "broker"); feed, monitor and api are
stopped (the simulator, standing in for Upstox, keeps running); BOSCHLTD falls through its stop; the GTT
fires at the broker with nobody connected; the guard comes back and reports, within one reconcile, the
position closed by the safety net with its fill. KAYNES, whose stop was not reached, keeps its GTT.

Usage: python -m deploy.demo_blackout deploy/local.sh   (the Makefile passes the runner of `make up`)
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx

from libs.common.settings import load_settings

POSITIONS = (
    {"symbol": "BOSCHLTD", "side": "long", "quantity": 39, "entry_price": 735.0, "stop_loss": 698.25},
    {"symbol": "KAYNES", "side": "long", "quantity": 100, "entry_price": 204.10, "stop_loss": 190.0},
)
GUARD = ("feed", "monitor", "api")


def _check(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code >= 400:
        sys.exit(f"{resp.request.method} {resp.request.url} answered {resp.status_code}: {resp.text}")
    return dict(resp.json()) if resp.content else {}


def _wait(what: str, condition: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = condition()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    sys.exit(f"timed out after {timeout_s:g}s waiting for {what}")


def _runner(runner: str, action: str) -> None:
    print(f"    $ {runner} {action} {' '.join(GUARD)}")
    subprocess.run([runner, action, *GUARD], check=True)  # noqa: S603 - our own script, fixed arguments


def main(runner: str) -> None:
    settings = load_settings()
    if not settings.simulator_mode:
        sys.exit("demo-blackout drives the simulator; unset UPSTOX_ACCESS_TOKEN and run make up first")
    if settings.safety_net != "on":
        sys.exit("demo-blackout shows the safety net: set SAFETY_NET=on (the default) and run make up again")
    api = f"http://{settings.api_host}:{settings.api_port}"
    sim = settings.sim_base_url
    key = settings.api_key.get_secret_value()
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(timeout=10, headers=headers) as client:

        def net(symbol: str) -> dict[str, Any]:
            return dict(_check(client.get(f"{api}/api/v1/positions/{symbol}"))["safety_net"])

        print("==> the bot's entries at the broker, then the guard is told (each gets a stop at the broker)")
        for body in POSITIONS:
            symbol = body["symbol"]
            current = client.get(f"{api}/api/v1/positions/{symbol}")
            if current.status_code == 200 and current.json()["state"] == "open":
                _check(client.delete(f"{api}/api/v1/positions/{symbol}"))  # a previous run's: drop it first
            _check(client.post(f"{sim}/sim/price", json={"symbol": symbol, "ltp": body["entry_price"]}))
            _check(
                client.post(f"{sim}/sim/trade", json={"symbol": symbol, "side": "buy", "quantity": body["quantity"]})
            )
            _check(client.post(f"{api}/api/v1/positions", json=body))
        for body in POSITIONS:
            symbol = body["symbol"]
            placed = _wait(f"{symbol}'s safety net", lambda s=symbol: net(s)["state"] == "active" and net(s))
            print(
                f"    {symbol}: SL ₹{body['stop_loss']:.2f}, GTT {placed['gtt_id']} at ₹{placed['trigger_price']:.2f}"
            )

        seen = len(_safety_closes(client, api, "BOSCHLTD"))
        print("==> blackout: the whole guard stops (feed, monitor, api); the simulator plays Upstox and keeps running")
        _runner(runner, "stop")
        _wait("the api to stop answering", lambda: _down(client, api), timeout_s=30)

        print("==> BOSCHLTD falls to ₹694.00, through its stop and its GTT's trigger, with nobody watching")
        _check(client.post(f"{sim}/sim/price", json={"symbol": "BOSCHLTD", "ltp": 694.0}))
        gtt = next(
            g for g in client.get(f"{sim}/sim/gtt").json() if g["trading_symbol"] == "BOSCHLTD" and not g["live"]
        )
        rule = gtt["rules"][0]
        order = client.get(f"{sim}/sim/orders").json()
        fill = next(o for o in order if o["order_id"] == rule["order_id"])
        filled = f"{fill['filled_quantity']} at ₹{fill['average_price']:.2f}"
        print(
            f"    at the broker: GTT {gtt['gtt_order_id']} {rule['status']}, order {fill['order_id']} {fill['status']}"
        )
        print(f"    ({filled}); nobody was connected")

        print("==> the guard comes back")
        back_at = time.monotonic()
        _runner(runner, "start")
        _wait("the api", lambda: client.get(f"{api}/api/v1/monitoring/status").status_code == 200)
        record = _wait(
            "the journal to show BOSCHLTD closed by the safety net",
            lambda: (closes := _safety_closes(client, api, "BOSCHLTD")) and len(closes) > seen and closes[0],
            timeout_s=90,
        )
        took_s = time.monotonic() - back_at
        print(f"    {took_s:.1f}s after the restart: BOSCHLTD closed_by={record['closed_by']}, {record['quantity']} at "
              f"₹{record['exit_price']:.2f}, P&L ₹{record['pnl']:.2f}, order {record['order_id']}")  # fmt: skip
        kaynes = net("KAYNES")
        print(f"    KAYNES stays open, its stop at the broker {kaynes['state']} (GTT {kaynes['gtt_id']})")
        print("==> see it in the monitor's log: grep SAFETY logs/monitor.log (or make logs-monitor)")


def _down(client: httpx.Client, api: str) -> bool:
    try:
        client.get(f"{api}/api/v1/monitoring/status", timeout=1)
    except httpx.HTTPError:
        return True
    return False


def _safety_closes(client: httpx.Client, api: str, symbol: str) -> list[dict[str, Any]]:
    """The journal's closes of `symbol` by the safety net, newest first."""
    closes = client.get(f"{api}/api/v1/positions/closed", params={"limit": 1000}).json()["closes"]
    return [c for c in closes if c["symbol"] == symbol and c["closed_by"] == "safety_net"]


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "deploy/local.sh")
