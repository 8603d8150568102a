"""Every tunable of the guard, read from the environment and `.env`.

Defaults are the numbers of the user's guide (stale after 30 s, cache expiry 300 s, reconnect
attempts per cycle 10, DNS check every 3 attempts, retries every 5-10 s). Tests compress time by
overriding them. `load_settings()` turns a bad value into one clear line naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

FeedMode = Literal["ltpc", "full", "option_greeks"]


class ConfigError(SystemExit):
    """A setting is invalid; the process must not start. The message names the variable."""


class Settings(BaseSettings):
    """The services' settings; each service reads the fields it needs. The simulator's own are `SimSettings`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True, case_sensitive=False
    )

    # --- Redis -------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout_s: float = Field(5.0, gt=0)
    redis_connect_timeout_s: float = Field(2.0, gt=0)
    redis_retries: int = Field(3, ge=0)
    # High availability (docs/scaling.md): Sentinel finds the master; WAIT confirms a claim on a replica.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "guard"
    claim_replica_timeout_s: float = Field(1.0, gt=0)
    feed_lease_s: float = Field(10.0, gt=0)
    instance_name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.-]{1,253}$")

    # --- Upstox (real) or simulator ----------------------------------------------------------
    upstox_access_token: SecretStr = SecretStr("")
    upstox_api_base: str = ""
    upstox_order_base: str = ""
    upstox_analytics_token: SecretStr = SecretStr("")
    upstox_client_id: str = ""
    upstox_client_secret: SecretStr = SecretStr("")
    upstox_redirect_uri: str = ""
    credentials_key: SecretStr = SecretStr("")
    token_expiry_warn_s: float = Field(1800.0, ge=0)
    # Where the simulator is in simulator mode, and what it lists; how it behaves is its own (services/sim/settings.py).
    sim_host: str = "127.0.0.1"
    sim_port: int = Field(8100, ge=0, le=65535)
    sim_tls: bool = False
    sim_access_token: SecretStr = SecretStr("sim-access-token")
    sim_extra_instruments: int = Field(0, ge=0)
    fno_expiry_weekday: int = Field(1, ge=0, le=6)
    fno_expiry_warn_min: float = Field(30.0, gt=0)
    instruments_url: str = ""

    # --- Price cache and the guide's three layers ---------------------------------------------
    price_stale_after_s: float = Field(30.0, gt=0)
    price_cache_ttl_s: int = Field(300, gt=0)

    # --- Feed connection ---------------------------------------------------------------------
    feed_mode: FeedMode = "ltpc"
    feed_watchlist: list[str] = Field(default_factory=list)
    feed_connect_style: Literal["authorize", "redirect"] = "authorize"
    feed_subscriptions_refresh_s: float = Field(30.0, gt=0)
    reconnect_base_delay_s: float = Field(5.0, gt=0)
    reconnect_max_delay_s: float = Field(10.0, gt=0)
    reconnect_attempts_per_cycle: int = Field(10, gt=0)
    auth_retry_delay_s: float = Field(60.0, gt=0)
    dns_check_every_attempts: int = Field(3, gt=0)
    dns_fallback_servers: list[str] = Field(default_factory=lambda: ["8.8.8.8", "1.1.1.1"])
    dns_port: int = Field(53, gt=0, le=65535)
    dns_timeout_s: float = Field(2.0, gt=0)
    dns_remember_s: float = Field(600.0, ge=0)
    ws_ping_interval_s: float = Field(3.0, gt=0)
    ws_ping_timeout_s: float = Field(3.0, gt=0)
    ws_open_timeout_s: float = Field(5.0, gt=0)
    feed_silence_timeout_s: float = Field(7.0, gt=0)
    ws_server_ping_timeout_s: float = Field(30.0, gt=0)
    feed_inbox_frames: int = Field(200, gt=0)
    vouch_interval_s: float = Field(2.0, gt=0)
    halt_detect_s: float = Field(30.0, gt=0)
    rest_poll_interval_s: float = Field(2.0, gt=0)
    tls_ca_file: str = ""

    # --- Heartbeats --------------------------------------------------------------------------
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_ttl_s: int = Field(10, gt=0)

    # --- Monitor and closing -----------------------------------------------------------------
    monitor_sweep_interval_s: float = Field(1.0, gt=0)
    monitor_stuck_close_s: float = Field(30.0, gt=0)
    monitor_fallback_log_interval_s: float = Field(10.0, ge=0)
    broker: Literal["upstox", "paper"] = "upstox"
    order_product: Literal["I", "D", "MTF"] = "I"
    order_market_protection: float = Field(-1, ge=-1, le=25)
    close_retry_base_s: float = Field(1.0, gt=0)
    close_retry_max_s: float = Field(30.0, gt=0)
    broker_timeout_s: float = Field(5.0, gt=0)
    broker_fill_timeout_s: float = Field(5.0, gt=0)
    broker_positions_max_age_s: float = Field(10.0, ge=0)
    upstox_algo_name: str = ""
    order_blocked_retry_s: float = Field(15.0, gt=0)
    reconcile_interval_s: float = Field(30.0, gt=0)
    safety_net: Literal["on", "off"] = "on"
    safety_net_buffer_pct: float = Field(0.5, ge=0, le=20)
    safety_net_lease_s: float = Field(10.0, gt=0)
    reconcile_adopt: bool = False
    reconcile_adopt_stop_loss_pct: float = Field(2.0, gt=0, lt=100)
    reconcile_adopt_take_profit_pct: float = Field(4.0, gt=0, lt=100)

    # --- API ---------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr = SecretStr("")
    token_probe_cache_s: float = Field(30.0, ge=0)
    api_max_body_bytes: int = Field(16384, gt=0)
    idempotency_ttl_s: int = Field(86400, gt=0)
    api_allowed_hosts: list[str] = Field(default_factory=list)
    api_public_reads: bool = False
    journal_maxlen: int = Field(10000, gt=0)

    # --- Metrics (Prometheus; the api serves its own on GET /metrics) ------------------------
    metrics_host: str = "127.0.0.1"
    feed_metrics_port: int = Field(9101, ge=0, le=65535)
    monitor_metrics_port: int = Field(9102, ge=0, le=65535)
    alerts_metrics_port: int = Field(9103, ge=0, le=65535)
    # --- Alerts and the dead man's switch ------------------------------------------------------
    alert_urls: list[SecretStr] = Field(default_factory=list)
    alert_feed_down_s: float = Field(20.0, ge=0)
    alert_repeat_s: float = Field(60.0, ge=0)
    alert_check_interval_s: float = Field(1.0, gt=0)
    alert_retry_base_s: float = Field(1.0, gt=0)
    alert_retry_max_s: float = Field(30.0, gt=0)
    alert_claim_idle_s: float = Field(60.0, gt=0)
    healthcheck_ping_url: SecretStr = SecretStr("")
    healthcheck_ping_s: float = Field(60.0, gt=0)

    # --- Logging -----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_dir: str = ""

    # --- Process -----------------------------------------------------------------------------
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    def __init__(self, **values: Any) -> None:
        # pydantic-settings ignores an unknown keyword (extra="ignore" is for `.env`, which other tools share):
        # a misspelt setting passed in code would be dropped silently and change nothing.
        _refuse_unknown(type(self), values)
        super().__init__(**values)

    @classmethod
    def load(cls, **overrides: object) -> Self:
        """Read the settings; on a bad value raise `ConfigError` with one line naming the variable."""
        try:
            return cls(**overrides)
        except SettingsError as exc:  # a list setting (FEED_WATCHLIST, ALERT_URLS, ...) that is not JSON
            field = re.search(r'field "(\w+)"', str(exc))
            name = field.group(1).upper() if field else "SETTINGS"
            raise ConfigError(f'config error: {name}: not a JSON list; write it as ["first", "second"]') from None
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = "_".join(str(p) for p in err["loc"]).upper() or "SETTINGS"
                problems.append(f"{name}: {err['msg']}")
            raise ConfigError("config error: " + "; ".join(problems)) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """pydantic's copy, refusing a name this class has no field for: `update` is not validated, so a
        misspelt or moved setting (say a simulator one on the services' `Settings`) would otherwise be kept
        silently and change nothing."""
        _refuse_unknown(type(self), update or {})
        return super().model_copy(update=update, deep=deep)

    @model_validator(mode="after")
    def _market_protection_is_auto_or_a_percentage(self) -> Settings:
        if -1 < self.order_market_protection < 0:
            raise ValueError("ORDER_MARKET_PROTECTION must be -1 (auto), 0 (none) or a percentage up to 25")
        return self

    @model_validator(mode="after")
    def _backoff_cap_not_below_base(self) -> Settings:
        if self.reconnect_max_delay_s < self.reconnect_base_delay_s:
            raise ValueError("RECONNECT_MAX_DELAY_S must be >= RECONNECT_BASE_DELAY_S")
        return self

    @cached_property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """`REDIS_SENTINELS` as (host, port) pairs; empty when Redis is reached through `REDIS_URL` alone."""
        return [_host_port(item) for item in self.redis_sentinels.split(",") if item.strip()]

    @model_validator(mode="after")
    def _sentinels_parse(self) -> Settings:
        self.sentinel_addresses  # noqa: B018 - raises ValueError on a bad entry, so the service does not start
        return self

    @property
    def simulator_mode(self) -> bool:
        """True when no Upstox token is set: every base URL and the token point at the simulator."""
        return not self.upstox_access_token.get_secret_value()

    @cached_property
    def sim_base_url(self) -> str:
        scheme = "https" if self.sim_tls else "http"
        return f"{scheme}://{self.sim_host}:{self.sim_port}"

    @property
    def api_base(self) -> str:
        """Upstox REST base (profile, feed authorize, positions)."""
        if self.upstox_api_base:
            return self.upstox_api_base.rstrip("/")
        return self.sim_base_url if self.simulator_mode else "https://api.upstox.com"

    @property
    def order_base(self) -> str:
        """Upstox order base (place/modify/cancel live on the HFT host)."""
        if self.upstox_order_base:
            return self.upstox_order_base.rstrip("/")
        return self.sim_base_url if self.simulator_mode else "https://api-hft.upstox.com"

    @property
    def access_token(self) -> SecretStr:
        """The token the services present: the real one, or the simulator's in simulator mode."""
        return self.sim_access_token if self.simulator_mode else self.upstox_access_token

    @property
    def api_bound_to_loopback(self) -> bool:
        if self.api_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            return False

    def secrets(self) -> list[str]:
        """Every secret value that must never reach a log line or a response."""
        values = [
            self.upstox_access_token,
            self.upstox_analytics_token,
            self.upstox_client_secret,
            self.credentials_key,
            self.api_key,
            self.healthcheck_ping_url,
            *self.alert_urls,
        ]
        if self.sim_access_token.get_secret_value() != "sim-access-token":
            values.append(self.sim_access_token)
        return [v.get_secret_value() for v in values if v.get_secret_value()]


def _refuse_unknown(cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
    """TypeError naming each keyword `cls` has no field for (pydantic-settings' own `_env_file` and the like
    pass)."""
    unknown = sorted(name for name in values if not name.startswith("_") and name not in cls.model_fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"REDIS_SENTINELS: {item.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


def load_settings(**overrides: object) -> Settings:
    """Read the services' settings; on a bad value raise `ConfigError` with one line naming the variable."""
    return Settings.load(**overrides)
