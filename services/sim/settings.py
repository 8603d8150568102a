"""The simulator's own settings: how the offline Upstox behaves (seed, ticks, rate limits, TLS, DNS, pings).

`SimSettings` is the services' `Settings` plus the fields only the simulator reads, under the same `SIM_...`
variable names as before. It extends `Settings` because the simulator also reads shared ones: where it listens
and the token it accepts (`SIM_HOST`, `SIM_PORT`, `SIM_TLS`, `SIM_ACCESS_TOKEN`, which the services read to reach it
in simulator mode), the app it knows as registered (`UPSTOX_CLIENT_ID`, ...), `API_PORT` for the token notifier,
the F&O expiry weekday and the logging. A test that tunes the simulator builds `SimSettings.of(settings, ...)`,
which validates: a name that is not a setting of the simulator is an error, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from libs.common.settings import Settings


class SimSettings(Settings):
    """The services' settings plus the simulator's behaviour."""

    sim_seed: int = 42
    sim_follow_market_hours: bool = False
    sim_tick_interval_s: float = Field(0.2, gt=0)
    sim_ticks_per_interval: int = Field(0, ge=0)
    sim_feed_port: int = Field(8101, ge=0, le=65535)
    sim_ws_ping_interval_s: float = Field(5.0, gt=0)
    sim_dns_port: int = Field(0, ge=0, le=65535)
    sim_tls_ca_path: str = ""
    sim_hostnames: list[str] = Field(default_factory=list)
    sim_order_rate_limit_per_s: int = Field(10, ge=0)
    sim_order_rate_limit_per_min: int = Field(500, ge=0)
    sim_require_algo_name: str = ""
    sim_notifier_url: str = ""

    @classmethod
    def of(cls, settings: Settings, **overrides: Any) -> SimSettings:
        """`settings` (the services' or the simulator's) with `overrides`, validated; the simulator's fields that
        neither gives take their defaults (not the environment)."""
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"SimSettings has no setting {', '.join(unknown)}")
        values = {name: getattr(settings, name) for name in type(settings).model_fields}
        return cls.model_validate({**values, **overrides})
