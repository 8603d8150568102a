from __future__ import annotations

import pytest

from libs.common import keys
from libs.common.settings import ConfigError, load_settings


def test_sentinels_parse_into_host_port_pairs() -> None:
    settings = load_settings(_env_file=None, redis_sentinels=" 10.0.0.1:26379,host-b:26380 ,[::1]:26381")
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("host-b", 26380), ("::1", 26381)]
    assert settings.redis_sentinel_master == "guard"
    assert load_settings(_env_file=None).sentinel_addresses == []  # REDIS_URL alone


@pytest.mark.parametrize("value", ["10.0.0.1", "10.0.0.1:port", ":26379", "10.0.0.1:70000"])
def test_a_bad_sentinel_address_stops_the_service_with_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, redis_sentinels=value)
    assert "REDIS_SENTINELS" in str(caught.value.code)
    assert "\n" not in str(caught.value.code)


def test_instance_names_are_key_safe() -> None:
    assert load_settings(_env_file=None).instance_name  # the host name by default
    with pytest.raises(ConfigError):
        load_settings(_env_file=None, instance_name="feed a")
    assert keys.heartbeat("monitor", "host-a") == "heartbeat:monitor:host-a"
    assert keys.instances("feed") == "instances:feed"
