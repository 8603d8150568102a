"""`make demo-outage`: the guide's outage examples, driven on the simulator through the real services.

brief     Example 1: a 30 s disconnect during which KAYNES hits its take-profit on a cached price.
extended  Example 2: an outage longer than the cache expiry (run the system with a small PRICE_CACHE_TTL_S
          and PRICE_STALE_AFTER_S to see it in a minute), then the manual emergency close.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx

from libs.common.settings import load_settings

HEALTH = "/api/v1/monitoring/connection-health"


def _post(client: httpx.Client, url: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    headers = {"X-API-Key": key} if key else {}
    resp = client.post(url, json=body, headers=headers)
    if resp.status_code >= 400 and resp.status_code != 409:
        sys.exit(f"{url} answered {resp.status_code}: {resp.text}")
    if resp.status_code == 409:  # already open from an earlier run, or not held at the broker: say which
        print(f"  409: {resp.json().get('detail')}")
    return dict(resp.json())


def _health(client: httpx.Client, api: str) -> dict[str, Any]:
    return dict(client.get(api + HEALTH, params={"symbols": "BOSCHLTD,KAYNES"}).json())


def _show(client: httpx.Client, api: str, label: str) -> None:
    h = _health(client, api)
    entries = h["price_cache"]["cache_entries"]
    ages = ", ".join(
        f"{s} {e['price']} ({e['age_seconds']}s{' stale' if e['is_stale'] else ''})" for s, e in entries.items()
    )
    print(f"  [{label}] connected={h['websocket']['connected']}  {ages}  advice: {h.get('advice', '')}")


def main(kind: str) -> None:
    settings = load_settings()
    if not settings.simulator_mode:
        sys.exit("demo-outage drives the simulator; unset UPSTOX_ACCESS_TOKEN and run make up first")
    api = f"http://{settings.api_host}:{settings.api_port}"
    sim = settings.sim_base_url
    key = settings.api_key.get_secret_value()
    with httpx.Client(timeout=10) as client:
        print("==> pinning prices: BOSCHLTD ₹735.00, KAYNES ₹204.10")
        _post(client, sim + "/sim/price", {"symbol": "BOSCHLTD", "ltp": 735.0}, "")
        _post(client, sim + "/sim/price", {"symbol": "KAYNES", "ltp": 204.10}, "")
        time.sleep(1.5)
        print("==> the bot buys BOSCHLTD 39 at the broker (simulator: POST /sim/trade), then has it guarded")
        _post(client, sim + "/sim/trade", {"symbol": "BOSCHLTD", "side": "buy", "quantity": 39}, "")
        print("==> registering BOSCHLTD long 39 @ 735.00, SL 698.25")
        _post(
            client,
            api + "/api/v1/positions",
            {"symbol": "BOSCHLTD", "side": "long", "quantity": 39, "entry_price": 735.0, "stop_loss": 698.25},
            key,
        )
        _show(client, api, "before")
        duration = 30 if kind == "brief" else settings.price_cache_ttl_s + 15
        print(f"==> the network drops for {duration} s (simulator fault 'drop')")
        _post(client, sim + "/sim/faults", {"kind": "drop", "duration_s": duration}, "")
        time.sleep(10)
        _show(client, api, "+10s")
        if kind == "brief":
            print("==> the bot registers KAYNES long @ 190.00 with TP 197.76 while the feed is down;")
            print("    the cached price ₹204.10 is already past TP, so the monitor closes it on the cached price")
            _post(client, sim + "/sim/trade", {"symbol": "KAYNES", "side": "buy", "quantity": 100}, "")
            _post(
                client,
                api + "/api/v1/positions",
                {"symbol": "KAYNES", "side": "long", "quantity": 100, "entry_price": 190.0, "take_profit": 197.76},
                key,
            )
            time.sleep(duration - 8)
            _show(client, api, "after")
        else:
            deadline = time.monotonic() + settings.price_cache_ttl_s + 60
            while _health(client, api)["price_cache"]["open_positions"]["expired"] < 1:
                if time.monotonic() > deadline:
                    sys.exit("the cache did not expire in time; is PRICE_CACHE_TTL_S what the services use?")
                _show(client, api, "waiting")
                time.sleep(5)
            print("==> cache expired: closing BOSCHLTD by hand through the emergency API")
            result = _post(
                client,
                api + "/api/v1/monitoring/emergency-close-position",
                {"symbol": "BOSCHLTD", "reason": "emergency"},
                key,
            )
            print(f"  {result}")
        print("\nWhat to look at:")
        print('  grep -hE "\\[FALLBACK\\]|\\[SL\\]|\\[TP\\]|closed successfully" logs/monitor.log | tail')
        print('  grep -h "\\[VERBOSE\\] Reconnecting" logs/feed.log | tail')
        print(f"  curl -s {api}/api/v1/positions/closed | jq")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "brief")
