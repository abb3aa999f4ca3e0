"""One settings object for every process, read from the environment.

Every variable is documented in the README. A missing or malformed value stops
start-up with :class:`SettingsError`, whose message names the variable and what
was expected, instead of a traceback from deep inside a client library.
"""

from __future__ import annotations

import hashlib
from datetime import time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from crm_runtime import quiet_hours

SERVICES = ("customers", "interactions", "loyalty")

#: Default first ports; service ``n`` in :data:`SERVICES` gets ``base + n``.
GRPC_BASE_PORT = 50051
METRICS_BASE_PORT = 9101

#: Default limits of the contact gate, per purpose (``CRM_CONTACT_CAPS``).
DEFAULT_CONTACT_CAPS = {"service": 6, "surveys": 2, "newsletter": 4, "promotional_offers": 3}


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


class ApiToken(BaseModel):
    """A bearer token of one calling system and the scopes it was granted.

    Give either ``token`` (the secret itself, fine for development) or
    ``token_sha256`` (its hex SHA-256 digest, so the secret is not stored in
    plain text in a config map).
    """

    system: str = Field(min_length=1, description="Name of the calling system, e.g. 'pos'.")
    scopes: list[str] = Field(description="Granted scopes, e.g. ['customers:read'].")
    token: str | None = Field(default=None, min_length=16)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_secret(self) -> ApiToken:
        if not self.token and not self.token_sha256:
            raise ValueError("needs 'token' or 'token_sha256'")
        return self

    def digest(self) -> str:
        if self.token_sha256:
            return self.token_sha256
        if self.token:
            return hashlib.sha256(self.token.encode()).hexdigest()
        raise ValueError(f"token for system {self.system!r} needs 'token' or 'token_sha256'")


class Settings(BaseSettings):
    """Process settings. Variables use the ``CRM_`` prefix except the two
    connection strings, which use their conventional names."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "CRM_DATABASE_URL"),
        description="postgresql://user@host:port/db; unset starts an embedded PostgreSQL.",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "CRM_KAFKA_BOOTSTRAP_SERVERS"),
        description="host:port[,host:port]; unset starts the embedded Tansu broker.",
    )
    data_dir: Path = Field(default=Path(".local"), description="Embedded stack data folder.")
    grpc_host: str = "127.0.0.1"
    grpc_base_port: int = Field(default=GRPC_BASE_PORT, ge=1, le=65000)
    metrics_base_port: int = Field(default=METRICS_BASE_PORT, ge=1, le=65000)
    topic_partitions: int = Field(default=6, ge=1, le=1000)
    topic_replication_factor: int = Field(
        default=1, ge=-1, le=10,
        description="Replicas per topic `crm topics` creates; -1 takes the broker's default.")
    topic_partition_overrides: dict[str, Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=dict, description="JSON mapping of topic name to partition count.")
    api_tokens: list[ApiToken] = Field(default_factory=list)
    dev_token: str | None = Field(default=None, min_length=16)
    consumer_batch_size: int = Field(
        default=1000, ge=1, le=10000,
        description="Most records a consumer processes in one database transaction.")
    consumer_concurrency: int = Field(
        default=2, ge=1, le=16,
        description="Most workers per consumer, each applying batches of partitions no other "
                    "worker holds in transactions of its own; more than one only during a "
                    "backlog.")
    consumer_batch_wait_ms: int = Field(default=50, ge=0, le=60000)
    consumer_commit_interval_ms: int = Field(
        default=250, ge=0, le=60000,
        description="While records keep coming, a consumer commits its offsets to the broker "
                    "at most this often (after the database commit, as always); at once when "
                    "they stop. 0: after every batch.")
    consumer_fetch_max_wait_ms: int = Field(
        default=500, ge=0, le=10000,
        description="How long the broker may hold a fetch open waiting for records (Kafka "
                    "answers as soon as records arrive; `crm up` sets 50 with the embedded "
                    "broker, which does not).")
    consumer_idle_after_ms: int = Field(
        default=0, ge=0, le=3_600_000,
        description="After this long without records a consumer stops fetching and looks "
                    "again every CRM_CONSUMER_IDLE_PROBE_MS (0: never; Kafka answers a held "
                    "fetch at once, so its fetch wait is the idle poll; `crm up` sets 10000 "
                    "with the embedded broker, which does not).")
    consumer_idle_probe_ms: int = Field(
        default=500, ge=1, le=60000,
        description="How often an idle consumer fetches (see CRM_CONSUMER_IDLE_AFTER_MS): the "
                    "most the first records after a quiet spell wait, per hop.")
    consumer_session_timeout_ms: int = Field(default=10000, ge=1000, le=300000)
    consumer_heartbeat_interval_ms: int = Field(default=3000, ge=100, le=60000)
    consumer_rebalance_timeout_ms: int = Field(default=30000, ge=1000, le=600000)
    relay_batch_size: int = Field(default=500, ge=1, le=10000)
    gc_gen0_threshold: int = Field(
        default=20000, ge=0, le=10_000_000,
        description="Allocations between two young-generation garbage collections of a service "
                    "process (0: Python's default, 700).")
    producer_batch_bytes: int = Field(
        default=1 << 20, ge=16384, le=64 << 20,
        description="Largest record batch per partition the relay's producer sends at once.")
    relay_poll_interval_s: float = Field(
        default=1.0, gt=0, le=60,
        description="Idle poll of the relay; writers wake it at once with NOTIFY.")
    relay_lanes: int = Field(default=4, ge=1, le=1024)
    relay_concurrency: int = Field(
        default=1, ge=1, le=1024,
        description="Transactions the relay publishes the pending lanes in at the same time, "
                    "each on a pool connection (1: every pending lane in one).")
    outbox_retention_hours: int = Field(default=24 * 7, ge=0)
    inbox_retention_days: int = Field(
        default=30, ge=1,
        description="Processed event ids are kept this long; keep it above the topics' "
                    "retention so a replayed event is still recognised.")
    dead_letter_key_retention_days: int = Field(
        default=30, ge=1, le=3650,
        description="A dead letter's key (its record goes to the dead-letter topic sealed) is "
                    "destroyed after this many days, or at once when its customer is erased: "
                    "replay dead letters within it.")
    scheduler_poll_interval_s: float = Field(default=0.2, gt=0, le=60)
    scheduler_batch_size: int = Field(default=100, ge=1, le=10000)
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    db_pool_max: int = Field(default=10, ge=1, le=1000)
    db_pool_min: int = Field(
        default=4, ge=1, le=1000,
        description="Connections a service process opens at start and keeps: a connection "
                    "made later pays its set-up (temporary tables, type codecs) on the first "
                    "batch or call that needs it.")
    metrics_refresh_s: float = Field(default=5.0, gt=0, le=300,
                                     description="How often state gauges are re-queried.")
    churn_window_days: int = Field(
        default=365, ge=1, le=3650,
        description="Days without a purchase after which a customer becomes former.")
    erasure_ack_timeout_s: float = Field(
        default=3600.0, gt=0, le=30 * 86400,
        description="How long the services keeping customer data have to acknowledge an "
                    "erasure before it counts as overdue (crm_erasures_overdue).")
    contact_caps: dict[str, Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: dict(DEFAULT_CONTACT_CAPS),
        description="JSON object, per contact purpose: a proactive contact of that purpose is "
                    "allowed while the customer has fewer contacts (of every purpose) in the "
                    "window; purposes left out keep their default (the contact gate, customers "
                    "service).")
    contact_cap_window_days: int = Field(
        default=7, ge=1, le=365, description="The window of CRM_CONTACT_CAPS, in days.")
    quiet_hours_start: str = Field(
        default="21:00", description="Start of quiet hours, the customer's local time (HH:MM).")
    quiet_hours_end: str = Field(
        default="08:00", description="End of quiet hours (HH:MM); equal to the start: none.")
    default_time_zone: str = Field(
        default="UTC", description="IANA zone of customers whose zone is unknown.")
    customers_grpc_target: str | None = Field(
        default=None, description="host:port of the customers service, for services that "
                                  "register unknown contacts; default its local port.")
    interactions_grpc_target: str | None = Field(
        default=None, description="host:port of the interactions service, for the customers "
                                  "service's data-subject export; default its local port.")
    loyalty_grpc_target: str | None = Field(
        default=None, description="host:port of the loyalty service, for the customers "
                                  "service's data-subject export; default its local port.")
    service_token: str | None = Field(
        default=None, min_length=16,
        description="Bearer token this service presents to other services; default the "
                    "dev token.")
    export_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="How long the customers service waits for each other service's part of "
                    "a data-subject export (ExportCustomer) before the call fails naming it.")
    grpc_tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) the gRPC server presents; with "
                                  "CRM_GRPC_TLS_KEY_FILE it turns TLS on. Unset: plaintext.")
    grpc_tls_key_file: Path | None = Field(
        default=None, validate_default=True,
        description="PEM private key (unencrypted) of CRM_GRPC_TLS_CERT_FILE.")
    grpc_tls_client_ca_file: Path | None = Field(
        default=None, description="PEM CA certificate(s): set, the server requires client "
                                  "certificates signed by them (mutual TLS).")
    grpc_tls_ca_file: Path | None = Field(
        default=None, description="PEM CA certificate(s) this process trusts for the servers "
                                  "it calls; unset: gRPC's default roots.")
    grpc_tls_client_cert_file: Path | None = Field(
        default=None, description="PEM certificate this process presents when it calls a "
                                  "service; default CRM_GRPC_TLS_CERT_FILE.")
    grpc_tls_client_key_file: Path | None = Field(
        default=None, validate_default=True,
        description="PEM private key of CRM_GRPC_TLS_CLIENT_CERT_FILE; default "
                    "CRM_GRPC_TLS_KEY_FILE.")
    grpc_tls_server_name: str | None = Field(
        default=None, description="Name checked against the certificate of a service this "
                                  "process calls, instead of the target's host.")
    dev_clock_control: bool = Field(
        default=False,
        description="Development only: let Operations/AdvanceClock move the service's clock "
                    "(`crm up` with the embedded stack turns it on for the demo).")
    failpoints: str = Field(
        default="",
        description="Comma-separated fault-injection points, for tests that kill processes.",
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    otel_exporter: str = Field(
        default="none", pattern=r"^(none|console|otlp)$",
        description="OpenTelemetry spans: none, console, or otlp (to OTEL_EXPORTER_OTLP_ENDPOINT).")
    log_format: str = Field(
        default="auto", pattern=r"^(auto|json|human|text)$",
        description="json: one object per line with event, customer and trace ids; human: "
                    "short lines for a terminal (text is an old name of it); auto: human when "
                    "stderr is a terminal, else json.")

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql://user@host:port/database URL")
        return value or None

    @field_validator("topic_partition_overrides")
    @classmethod
    def _check_overrides(cls, value: dict[str, int]) -> dict[str, int]:
        from crm_contracts.topics import ALL

        known = {*ALL, *(f"{t}.dlq" for t in ALL)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown topic(s) {unknown}; expected some of {sorted(known)}")
        return value

    @field_validator("contact_caps")
    @classmethod
    def _check_caps(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(DEFAULT_CONTACT_CAPS))
        if unknown:
            raise ValueError(f"unknown purpose(s) {unknown}; expected some of "
                             f"{list(DEFAULT_CONTACT_CAPS)}")
        return {**DEFAULT_CONTACT_CAPS, **value}

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _check_clock_time(cls, value: str) -> str:
        quiet_hours.parse_clock_time(value)
        return value

    @field_validator("default_time_zone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        if not quiet_hours.is_time_zone(value):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. 'Europe/Madrid'")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if not value:
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {server!r}")
        return value

    @field_validator("grpc_tls_cert_file", "grpc_tls_key_file", "grpc_tls_client_ca_file",
                     "grpc_tls_ca_file", "grpc_tls_client_cert_file", "grpc_tls_client_key_file",
                     "grpc_tls_server_name", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("grpc_tls_key_file", "grpc_tls_client_key_file")
    @classmethod
    def _check_tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """A certificate and its key go together (checked on the key, which
        comes after its certificate)."""
        cert = "grpc_tls_cert_file" if info.field_name == "grpc_tls_key_file" \
            else "grpc_tls_client_cert_file"
        if cert in info.data and (info.data[cert] is None) != (value is None):
            raise ValueError(f"{env_name(cert)} and {env_name(str(info.field_name))} go "
                             "together: set both, or neither")
        return value

    @field_validator("grpc_tls_client_ca_file")
    @classmethod
    def _check_mutual_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("grpc_tls_cert_file") is None:
            raise ValueError("mutual TLS needs TLS: set CRM_GRPC_TLS_CERT_FILE and "
                             "CRM_GRPC_TLS_KEY_FILE too")
        return value

    def customers_target(self) -> str:
        return self.service_target("customers")

    def service_target(self, service: str) -> str:
        """host:port another service of the product answers gRPC on: its
        ``CRM_<SERVICE>_GRPC_TARGET``, else its local port."""
        configured: str | None = getattr(self, f"{service}_grpc_target")
        return configured or f"{self.grpc_host}:{self.grpc_port(service)}"

    def churn_window(self) -> timedelta:
        return timedelta(days=self.churn_window_days)

    def quiet_hours(self) -> tuple[time, time]:
        """Quiet hours' start and end, local times of day."""
        return (quiet_hours.parse_clock_time(self.quiet_hours_start),
                quiet_hours.parse_clock_time(self.quiet_hours_end))

    def consumer_options(self) -> dict[str, int]:
        """Group-membership timings handed to aiokafka, and the idle probe
        the consumer keeps for itself (``crm_runtime.consumer.IDLE_OPTIONS``)."""
        return {"idle_after_ms": self.consumer_idle_after_ms,
                "idle_probe_ms": self.consumer_idle_probe_ms,
                "fetch_max_wait_ms": self.consumer_fetch_max_wait_ms,
                "session_timeout_ms": self.consumer_session_timeout_ms,
                "heartbeat_interval_ms": self.consumer_heartbeat_interval_ms,
                "rebalance_timeout_ms": self.consumer_rebalance_timeout_ms}

    @model_validator(mode="after")
    def _check_retry(self) -> Settings:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(f"CRM_RETRY_MAX_S ({self.retry_max_s}) must be at least "
                             f"CRM_RETRY_INITIAL_S ({self.retry_initial_s})")
        return self

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            if "db_pool_min" in self.model_fields_set:
                raise ValueError(f"CRM_DB_POOL_MIN ({self.db_pool_min}) must be at most "
                                 f"CRM_DB_POOL_MAX ({self.db_pool_max})")
            self.db_pool_min = self.db_pool_max  # a small pool keeps all it has
        return self

    def grpc_port(self, service: str) -> int:
        return self.grpc_base_port + SERVICES.index(service)

    def metrics_port(self, service: str) -> int:
        return self.metrics_base_port + SERVICES.index(service)

    def partitions_for(self, topic: str) -> int:
        return self.topic_partition_overrides.get(topic, self.topic_partitions)

    @cached_property
    def failpoint_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.failpoints.split(",") if p.strip())

    def token_table(self) -> dict[str, ApiToken]:
        """Tokens by SHA-256 digest, including the dev token when one is set."""
        table = {t.digest(): t for t in self.api_tokens}
        if self.dev_token:
            dev = ApiToken(system="dev", scopes=["*"], token=self.dev_token)
            table[dev.digest()] = dev
        return table


_ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
}


def env_name(field: str) -> str:
    if field.isupper():  # already an alias such as DATABASE_URL
        return field
    return _ENV_NAMES.get(field, f"CRM_{field.upper()}")


#: Settings whose values are secrets: errors never echo what was given.
_SECRET_FIELDS = {"api_tokens", "dev_token", "service_token", "CRM_API_TOKENS",
                  "CRM_DEV_TOKEN", "CRM_SERVICE_TOKEN"}


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, turning validation errors into one
    :class:`SettingsError` naming each bad variable and what it expected."""
    try:
        return Settings(**overrides)
    except SourceError as exc:
        # A complex value (list or mapping) that is not JSON at all.
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise SettingsError(f"invalid settings:\n  {env_name(field)}: expected JSON "
                            f"({exc.__cause__ or exc})") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            name = env_name(loc[0]) if loc else "?"
            where = "".join(f"[{p}]" for p in loc[1:])
            got = "<secret>" if loc and loc[0] in _SECRET_FIELDS else repr(err.get("input"))
            problems.append(f"{name}{where}: {err['msg']} (got {got})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
