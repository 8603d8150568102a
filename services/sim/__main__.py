"""`python -m services.sim`: the Upstox-compatible simulator (REST + WebSocket feeder + control API)."""

from __future__ import annotations

from loguru import logger
from redis.exceptions import RedisError

from libs.common.clock import SystemClock
from libs.common.heartbeat import beat
from libs.common.redis_client import create_redis
from libs.common.service import run_service, supervise
from libs.common.settings import Settings
from services.sim.server import running_simulator

EPILOG = """\
control API (no token needed), on http://SIM_HOST:SIM_PORT:
  POST /sim/price   {"symbol": "BOSCHLTD", "ltp": 575.0}    set and pin a price (tick sent at once)
                    {"symbol": "BOSCHLTD", "release": true}  let the random walk move it again
  POST /sim/trade   {"symbol": "BOSCHLTD", "side": "buy", "quantity": 10}  a trade outside the guard
  POST /sim/instrument {"symbol": "BOSCHLTD", "halted": true}  halt one instrument (no ticks); false resumes
  POST /sim/faults  {"kind": K, "duration_s": N}  K = drop | close | mute | auth | rest_down
                    | partial_fill ("ratio") | slow_fill ("delay_s") | reply_lost | reject ("message") | ip_block
                    (close also takes "code": 1000 | 1011)
                    K = reply_delay with "delay_s": S: orders fill at once, their answer is held S s
  POST /sim/market  {"status": "NORMAL_CLOSE"}    force segment status (null = follow the clock)
  POST /sim/step    {"steps": N}                  move the market N steps now
  GET  /sim/orders  every order placed
  GET  /sim/state   prices, pins, faults, connections, positions
  POST /sim/reset   prices back to the seed's start; no pins, faults, orders or positions
Upstox endpoints: /v3/feed/market-data-feed[/authorize], /v2/user/profile, /v2|v3/order/place,
  /v2/order/details, /v2/order/retrieve-all, /v2/order/history, /v2/order/trades/get-trades-for-day,
  /v2/portfolio/short-term-positions, /v2/user/ip, /v2/market-quote/ltp,
  /market-quote/instruments/exchange/complete.json.gz; the WebSocket feeder listens on SIM_FEED_PORT.
"""


async def main(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, beating while Redis answers: the simulator itself does not need Redis."""
    clock = SystemClock()
    async with running_simulator(settings, rest_port=settings.sim_port, feed_port=settings.sim_feed_port):
        redis = create_redis(settings)
        try:
            try:
                await beat(redis, "sim", settings, clock)
            except (RedisError, OSError):
                logger.warning("Redis is not reachable: the simulator runs without a heartbeat (--check will fail)")
            await supervise("sim", {}, redis=redis, settings=settings, clock=clock)
        finally:
            await redis.aclose()


if __name__ == "__main__":
    raise SystemExit(
        run_service(
            "sim",
            main,
            description="Upstox-compatible simulator: REST, v3 WebSocket feed (protobuf), orders, fault injection.",
            epilog=EPILOG,
        )
    )
