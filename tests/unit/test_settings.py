from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.common.settings import ConfigError, Settings, load_settings
from services.sim.settings import SimSettings


def make(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg, arg-type]


def test_defaults_are_the_guides_numbers() -> None:
    s = make()
    assert s.price_stale_after_s == 30
    assert s.price_cache_ttl_s == 300
    assert s.reconnect_attempts_per_cycle == 10
    assert s.dns_check_every_attempts == 3
    assert (s.reconnect_base_delay_s, s.reconnect_max_delay_s) == (5, 10)
    assert s.dns_fallback_servers == ["8.8.8.8", "1.1.1.1"]
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8000)


def test_no_token_means_simulator_everywhere() -> None:
    s = make()
    assert s.simulator_mode
    assert s.api_base == s.order_base == "http://127.0.0.1:8100"
    assert s.access_token.get_secret_value() == "sim-access-token"


def test_a_token_means_real_upstox() -> None:
    s = make(upstox_access_token="real-token-123")
    assert not s.simulator_mode
    assert s.api_base == "https://api.upstox.com"
    assert s.order_base == "https://api-hft.upstox.com"
    assert s.access_token.get_secret_value() == "real-token-123"
    assert "real-token-123" not in repr(s)


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICE_STALE_AFTER_S", "2.5")
    monkeypatch.setenv("FEED_WATCHLIST", '["BOSCHLTD","KAYNES"]')
    s = load_settings(_env_file=None)
    assert s.price_stale_after_s == 2.5
    assert s.feed_watchlist == ["BOSCHLTD", "KAYNES"]


def test_bad_value_fails_with_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICE_CACHE_TTL_S", "five minutes")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value.code)
    assert "PRICE_CACHE_TTL_S" in message
    assert "\n" not in message


def test_backoff_cap_below_base_is_rejected() -> None:
    with pytest.raises(ConfigError, match="RECONNECT_MAX_DELAY_S"):
        load_settings(_env_file=None, reconnect_base_delay_s=10, reconnect_max_delay_s=5)


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert make(api_host=host).api_bound_to_loopback is loopback


@pytest.mark.parametrize("value", ["-0.5", "26", "-2"])
def test_market_protection_is_auto_none_or_a_percentage(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ORDER_MARKET_PROTECTION", value)
    with pytest.raises(ConfigError, match="ORDER_MARKET_PROTECTION"):
        load_settings()


def test_a_list_setting_that_is_not_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_URLS", "tgram://123456789:token/987654321")  # brackets and quotes forgotten
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert str(info.value.code) == 'config error: ALERT_URLS: not a JSON list; write it as ["first", "second"]'
    assert "123456789:token" not in str(info.value.code)


def test_alert_urls_and_the_ping_url_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_URLS", '["tgram://123456789:token/987654321"]')
    monkeypatch.setenv("HEALTHCHECK_PING_URL", "https://hc-ping.com/some-uuid")
    s = load_settings(_env_file=None)
    assert "tgram://123456789:token/987654321" in s.secrets()
    assert "https://hc-ping.com/some-uuid" in s.secrets()
    assert "token" not in repr(s.alert_urls)


def test_the_simulators_settings_are_its_own_under_the_same_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_SEED", "7")
    monkeypatch.setenv("SIM_ORDER_RATE_LIMIT_PER_S", "0")
    monkeypatch.setenv("SIM_PORT", "8200")
    sim = SimSettings.load(_env_file=None)
    assert (sim.sim_seed, sim.sim_order_rate_limit_per_s, sim.sim_port) == (7, 0, 8200)
    services = load_settings(_env_file=None)
    assert services.sim_port == 8200  # where the simulator is: the services' too
    assert not {"sim_seed", "sim_order_rate_limit_per_s", "sim_tick_interval_s"} & set(Settings.model_fields)


def test_a_copy_naming_a_setting_the_class_lacks_fails_instead_of_keeping_a_default() -> None:
    services = make(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="sim_order_rate_limit_per_s"):
        services.model_copy(update={"sim_order_rate_limit_per_s": 0})  # a simulator setting on the services' class
    with pytest.raises(TypeError, match="sim_tick_intreval_s"):
        SimSettings.of(services, sim_tick_intreval_s=0.05)
    sim = SimSettings.of(services, sim_order_rate_limit_per_s=0)
    assert (sim.sim_order_rate_limit_per_s, sim.redis_url, sim.sim_seed) == (0, "redis://127.0.0.1:1/0", 42)
    assert sim.model_copy(update={"sim_seed": 3}).sim_seed == 3
    assert SimSettings.of(sim).sim_order_rate_limit_per_s == 0  # a simulator's settings keep their own values


def test_a_misspelt_keyword_fails_instead_of_keeping_a_default() -> None:
    with pytest.raises(TypeError, match="redis_urll"):
        make(redis_urll="redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="sim_seed"):
        load_settings(_env_file=None, sim_seed=7)  # a simulator setting on the services' class
    assert make(redis_url="redis://127.0.0.1:1/0").redis_url == "redis://127.0.0.1:1/0"


def test_the_simulators_overrides_are_validated() -> None:
    with pytest.raises(ValidationError):
        SimSettings.of(make(), sim_tick_interval_s=0)
