"""The dead man's switch: ping HEALTHCHECK_PING_URL (healthchecks.io style) every HEALTHCHECK_PING_S while every
service is healthy, and `URL/fail` while one is not. When the machine, its power or its network is gone the
pings stop, and the outside service alerts the person.
"""

from __future__ import annotations

import httpx
from loguru import logger
from redis.exceptions import RedisError

from libs.common.clock import Clock
from libs.common.settings import Settings
from services.alerts.checks import Liveness


class HealthcheckPinger:
    def __init__(self, settings: Settings, clock: Clock, liveness: Liveness, http: httpx.AsyncClient) -> None:
        self._url = settings.healthcheck_ping_url.get_secret_value().rstrip("/")
        self._interval_s = settings.healthcheck_ping_s
        self._clock = clock
        self._liveness = liveness
        self._http = http
        self._failing = False
        self._problem = ""

    async def run(self) -> None:
        while True:
            await self.ping()
            await self._clock.sleep(self._interval_s)

    async def ping(self) -> None:
        """One ping: success when every watched service beats, `/fail` naming the ones that do not."""
        try:
            dead = sorted(await self._liveness.dead())
            problem = f"not running: {', '.join(dead)}" if dead else ""
        except RedisError as exc:
            problem = f"Redis unreachable ({type(exc).__name__})"
        url = self._url + ("/fail" if problem else "")
        try:
            resp = await self._http.post(url, content=problem or "ok")
            ok = resp.status_code < 400
            error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, type(exc).__name__
        if not ok and not self._failing:
            logger.warning(f"Healthcheck ping failed ({error}); the outside service may alert")
        if problem and problem != self._problem:
            logger.warning(f"Healthcheck pinged /fail: {problem}")
        self._failing, self._problem = not ok, problem
