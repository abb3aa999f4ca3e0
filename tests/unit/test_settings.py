"""Unit tests for crm_runtime.settings: reading and validating the environment."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from crm_app.cli import EMBEDDED_BROKER_ENV
from crm_runtime.settings import (
    ApiToken,
    Settings,
    SettingsError,
    env_name,
    load_settings,
)
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS

POS_TOKEN = "pos-token-0123456789abcdef"
DEV_TOKEN = "dev-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an environment without CRM settings (names are
    matched case-insensitively, as pydantic-settings does)."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("CRM_") or upper in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
            monkeypatch.delenv(name)


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- valid settings ---------------------------------------------------------------------------


def test_defaults_with_an_empty_environment() -> None:
    s = load_settings()
    assert s.database_url is None
    assert s.kafka_bootstrap_servers is None
    assert s.data_dir == Path(".local")
    assert s.topic_partitions == 6
    assert s.api_tokens == []
    assert s.dev_token is None
    assert s.token_table() == {}
    assert s.failpoint_set == frozenset()
    assert s.log_level == "INFO"


def test_valid_environment_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://crm@db:5432/crm")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092, kafka-2:9092,[::1]:9093")
    monkeypatch.setenv("CRM_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("CRM_TOPIC_PARTITION_OVERRIDES", '{"crm.loyalty.v1": 3}')
    monkeypatch.setenv("CRM_API_TOKENS", json.dumps(
        [{"system": "pos", "scopes": ["customers:read"], "token": POS_TOKEN}]))
    monkeypatch.setenv("CRM_RELAY_POLL_INTERVAL_S", "0.5")
    monkeypatch.setenv("CRM_DATA_DIR", "/var/lib/crm")
    monkeypatch.setenv("CRM_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("CRM_FAILPOINTS", "relay.after_publish, ,consumer.before_commit,")

    s = load_settings()

    assert s.database_url == "postgresql://crm@db:5432/crm"
    assert s.kafka_bootstrap_servers == "kafka-1:9092, kafka-2:9092,[::1]:9093"
    assert s.topic_partitions == 12
    assert s.topic_partition_overrides == {"crm.loyalty.v1": 3}
    assert s.api_tokens == [ApiToken(system="pos", scopes=["customers:read"], token=POS_TOKEN)]
    assert s.relay_poll_interval_s == 0.5
    assert s.data_dir == Path("/var/lib/crm")
    assert s.log_level == "DEBUG"
    assert s.failpoint_set == frozenset({"relay.after_publish", "consumer.before_commit"})


@pytest.mark.parametrize("name", ["DATABASE_URL", "CRM_DATABASE_URL"])
def test_database_url_under_either_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "postgres://crm@db/crm")
    assert load_settings().database_url == "postgres://crm@db/crm"


def test_empty_connection_strings_mean_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    s = load_settings()
    assert s.database_url is None
    assert s.kafka_bootstrap_servers is None


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOPIC_PARTITIONS", "12")
    assert load_settings(topic_partitions=2).topic_partitions == 2


# --- invalid settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CRM_TOPIC_PARTITIONS", "0", "greater than or equal to 1"),
        ("CRM_TOPIC_PARTITIONS", "1001", "less than or equal to 1000"),
        ("CRM_TOPIC_PARTITIONS", "many", "valid integer"),
        ("DATABASE_URL", "mysql://crm@db/crm", "expected a postgresql://"),
        ("CRM_DATABASE_URL", "db:5432", "expected a postgresql://"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "expected host:port[,host:port]"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092,kafka-2", "expected host:port[,host:port]"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:port", "expected host:port[,host:port]"),
        ("CRM_GRPC_BASE_PORT", "70000", "less than or equal to 65000"),
        ("CRM_RELAY_POLL_INTERVAL_S", "0", "greater than 0"),
        ("CRM_LOG_LEVEL", "CHATTY", "should match pattern"),
        ("CRM_DEV_TOKEN", "short", "at least 16 characters"),
    ],
)
def test_bad_value_names_the_variable_and_what_was_expected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str,
) -> None:
    message = settings_error(monkeypatch, **{name: value})
    lines = message.splitlines()
    assert lines[0] == "invalid settings:"
    # Both spellings of the database URL are reported under the conventional name.
    shown = "DATABASE_URL" if name == "CRM_DATABASE_URL" else name
    assert len(lines) == 2
    assert lines[1].strip().startswith(f"{shown}: ")
    assert expected in lines[1]
    # Secrets are never echoed; other values are, to show what was wrong.
    assert ("<secret>" if name == "CRM_DEV_TOKEN" else repr(value)) in lines[1]


def test_bad_api_token_names_the_entry_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = [
        {"system": "pos", "scopes": ["customers:read"], "token": POS_TOKEN},
        {"system": "web", "scopes": ["customers:read"], "token": "too-short"},
    ]
    message = settings_error(monkeypatch, CRM_API_TOKENS=json.dumps(tokens))
    assert "CRM_API_TOKENS[1][token]: " in message
    assert "at least 16 characters" in message


def test_bad_token_digest_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = [{"system": "pos", "scopes": ["a:read"], "token_sha256": "ABC"}]
    message = settings_error(monkeypatch, CRM_API_TOKENS=json.dumps(tokens))
    assert "CRM_API_TOKENS[0][token_sha256]: " in message
    assert "[0-9a-f]{64}" in message


def test_bad_partition_override_names_the_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch,
                             CRM_TOPIC_PARTITION_OVERRIDES='{"crm.loyalty.v1": "three"}')
    assert "CRM_TOPIC_PARTITION_OVERRIDES[crm.loyalty.v1]: " in message
    assert "valid integer" in message


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, CRM_TOPIC_PARTITIONS="0",
                             KAFKA_BOOTSTRAP_SERVERS="nohost", CRM_LOG_LEVEL="LOUD")
    names = [line.strip().split(":")[0] for line in message.splitlines()[1:]]
    assert sorted(names) == ["CRM_LOG_LEVEL", "CRM_TOPIC_PARTITIONS", "KAFKA_BOOTSTRAP_SERVERS"]


def test_settings_error_hides_the_pydantic_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOPIC_PARTITIONS", "0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_bad_override_argument_is_reported_by_its_variable_name() -> None:
    with pytest.raises(SettingsError, match=r"DATABASE_URL: .*postgresql://"):
        load_settings(database_url="sqlite:///crm.db")


def test_env_name() -> None:
    assert env_name("topic_partitions") == "CRM_TOPIC_PARTITIONS"
    assert env_name("database_url") == "DATABASE_URL"
    assert env_name("kafka_bootstrap_servers") == "KAFKA_BOOTSTRAP_SERVERS"
    assert env_name("DATABASE_URL") == "DATABASE_URL"


@pytest.mark.parametrize("name", ["CRM_API_TOKENS", "CRM_TOPIC_PARTITION_OVERRIDES"])
def test_malformed_json_variable_raises_settings_error(
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    message = settings_error(monkeypatch, **{name: "not json"})
    assert name in message


def test_api_token_without_secret_is_rejected_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch, CRM_API_TOKENS=json.dumps([{"system": "pos", "scopes": ["a:read"]}]))
    assert "CRM_API_TOKENS[0]" in message


def test_settings_error_does_not_echo_a_secret_token(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch, CRM_API_TOKENS=json.dumps([{"system": "pos", "token": POS_TOKEN}]))
    assert "CRM_API_TOKENS[0][scopes]" in message
    assert POS_TOKEN not in message


def test_retry_max_below_initial_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, CRM_RETRY_INITIAL_S="5", CRM_RETRY_MAX_S="1")
    assert "CRM_RETRY_MAX_S" in message


def test_a_pool_minimum_above_the_maximum_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, CRM_DB_POOL_MIN="8", CRM_DB_POOL_MAX="5")
    assert "CRM_DB_POOL_MIN (8) must be at most CRM_DB_POOL_MAX (5)" in message


def test_a_small_pool_maximum_lowers_the_default_minimum() -> None:
    assert Settings(db_pool_max=2).db_pool_min == 2
    assert Settings().db_pool_min == 4


# --- tokens -----------------------------------------------------------------------------------


def test_token_digest_is_sha256_of_the_token() -> None:
    token = ApiToken(system="pos", scopes=["customers:read"], token=POS_TOKEN)
    assert token.digest() == sha256(POS_TOKEN)


def test_token_sha256_is_used_as_given() -> None:
    digest = sha256("stored-elsewhere-0123456789")
    token = ApiToken(system="pos", scopes=["customers:read"], token_sha256=digest)
    assert token.digest() == digest


def test_token_without_secret_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="needs 'token' or 'token_sha256'"):
        ApiToken(system="pos", scopes=["customers:read"])


def test_token_table_is_keyed_by_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    web_digest = sha256("web-token-0123456789abcdef")
    monkeypatch.setenv("CRM_API_TOKENS", json.dumps([
        {"system": "pos", "scopes": ["customers:read"], "token": POS_TOKEN},
        {"system": "web", "scopes": ["customers:*"], "token_sha256": web_digest},
    ]))

    table = load_settings().token_table()

    assert set(table) == {sha256(POS_TOKEN), web_digest}
    assert POS_TOKEN not in table
    assert table[sha256(POS_TOKEN)].system == "pos"
    assert table[web_digest].scopes == ["customers:*"]


def test_dev_token_gets_every_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_DEV_TOKEN", DEV_TOKEN)
    table = load_settings().token_table()
    dev = table[sha256(DEV_TOKEN)]
    assert dev.system == "dev"
    assert dev.scopes == ["*"]
    assert list(table) == [sha256(DEV_TOKEN)]


# --- ports and partitions ---------------------------------------------------------------------


def test_ports_follow_the_service_order() -> None:
    s = Settings()
    assert [s.grpc_port(n) for n in ("customers", "interactions", "loyalty")] == [
        50051, 50052, 50053]
    assert [s.metrics_port(n) for n in ("customers", "interactions", "loyalty")] == [
        9101, 9102, 9103]


def test_ports_move_with_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_GRPC_BASE_PORT", "6000")
    monkeypatch.setenv("CRM_METRICS_BASE_PORT", "7000")
    s = load_settings()
    assert s.grpc_port("loyalty") == 6002
    assert s.metrics_port("interactions") == 7001


def test_port_of_an_unknown_service_raises() -> None:
    with pytest.raises(ValueError):
        Settings().grpc_port("billing")


def test_partitions_for_uses_overrides_then_the_default() -> None:
    s = Settings(topic_partitions=8, topic_partition_overrides={"crm.loyalty.v1": 2})
    assert s.partitions_for("crm.loyalty.v1") == 2
    assert s.partitions_for("crm.customers.v1") == 8


def test_the_embedded_broker_settings_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().consumer_fetch_max_wait_ms == 500  # a real Kafka's default
    # What crm up hands the services on Tansu parses into exactly those values.
    for name, value in EMBEDDED_BROKER_ENV.items():
        monkeypatch.setenv(name, value)
    loaded = load_settings()
    assert {k: getattr(loaded, k) for k in EMBEDDED_BROKER_SETTINGS} == EMBEDDED_BROKER_SETTINGS
