"""Settings: every IOT_* environment variable, read once into one validated object."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development defaults. Production refuses to start with any of these (see _refuse_weak_secrets).
DEV_JWT_KEYS = "dev:dev-only-jwt-key-change-me-0123456789abcdef"
DEV_MANUFACTURING_KEYS = "mk1:dev-only-manufacturing-key-change-me-012345"
DEV_MQTT_HOOK_TOKEN = "dev-only-mqtt-hook-token-change-me-0123456789"
DEV_DB_PASSWORD = "iotcore-dev"  # ops/services.sh creates the local roles with it
MIN_SECRET_LENGTH = 32

_REPO_ROOT = Path(__file__).resolve().parents[1]

# IOT_* variables that are not settings of the processes: read by the operator's shell in the
# runbooks and ops/*.sh, and by the test and build tooling. Any other IOT_* name that is not a
# setting is a typo or a setting no longer read (tests/platform/test_config.py keeps this
# list complete against every IOT_* name in the repository).
TOOLING_VARIABLES = frozenset(
    {
        # runbooks and ops/backup.sh, ops/restore.sh
        "IOT_API",
        "IOT_INTERNAL",
        "IOT_BROKER",
        "IOT_BACKUP_URL",
        "IOT_ADMIN_URL",
        # ops/lib.sh, ops/services.sh, ops/test.sh
        "IOT_VENV",
        "IOT_DB_NAME",
        "IOT_DEV_DB_PASSWORD",
        "IOT_TIMESCALEDB",
        "IOT_TIMESCALEDB_HOME",
        "IOT_TIMESCALEDB_PORT",
        "IOT_TIMESCALEDB_SOURCE",
        "IOT_CHROMIUM",
        "IOT_CONSOLE_ARTIFACTS",
    }
)
TOOLING_PREFIXES = ("IOT_TEST_", "IOT_FUZZ_")


def _resource_dir(name: str) -> Path:
    """`sql/` and `migrations/` live at the repo root; an image sets IOT_SQL_DIR and
    IOT_MIGRATIONS_DIR to where it copied them."""
    return _REPO_ROOT / name


def parse_key_ring(raw: str, variable: str) -> dict[str, str]:
    """Parse "id:secret,id2:secret2" into {id: secret}; the secret may itself contain ':'."""
    ring: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        if not sep or not key_id or not secret:
            raise ValueError(f"{variable}: entries must look like 'id:secret'")
        if key_id in ring:
            raise ValueError(f"{variable}: key id {key_id!r} appears twice")
        ring[key_id] = secret
    if not ring:
        raise ValueError(f"{variable}: at least one key is required")
    return ring


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOT_", env_file=None, extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    # Storage
    database_url: str = f"postgresql://iotcore_service:{DEV_DB_PASSWORD}@127.0.0.1:5432/iotcore"
    database_owner_url: str = f"postgresql://iotcore_owner:{DEV_DB_PASSWORD}@127.0.0.1:5432/iotcore"
    database_read_url: str | None = None
    database_pool_max: int = Field(default=10, ge=1)
    database_timeout_s: float = Field(default=5.0, gt=0)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "iot:"
    redis_timeout_s: float = Field(default=1.0, gt=0)
    migrations_dir: Path = Field(default_factory=lambda: _resource_dir("migrations"))
    sql_dir: Path = Field(default_factory=lambda: _resource_dir("sql"))

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # A connection waiting for a request head (idle keep-alive, or a head sent in part) is
    # closed after this long.
    http_idle_timeout_s: float = Field(default=30, gt=0)
    # Live streams (SSE): open at once per user and per tenant, on all replicas together;
    # Redis connections for their reads, per process.
    stream_max_per_user: int = Field(default=5, ge=1)
    stream_max_per_tenant: int = Field(default=50, ge=1)
    stream_redis_connections: int = Field(default=10, ge=1)
    metrics_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="Internal listener: /metrics, health and the broker hooks (/api/v1/mqtt/*); "
        "keep it off the public network (the public port answers 404 for them)",
    )
    trusted_proxies: int = Field(default=0, ge=0, description="X-Forwarded-For hops to trust")

    # EMQX's REST API (5.8: API key and secret as Basic credentials), to end the live sessions
    # of a device whose credentials were revoked. Unset: no EMQX to tell (embedded broker).
    emqx_api_url: str | None = None
    emqx_api_key: str = ""
    emqx_api_secret: SecretStr = SecretStr("")
    emqx_api_timeout_s: float = Field(default=5, gt=0)

    # MQTT: the broker ingest consumes from, and the embedded broker
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    ingest_mqtt_username: str = "iotcore-ingest"
    # No default anyone could know: unset, each process draws its own, so that the account is
    # unusable until an operator configures the same secret for EMQX's hook and the consumer.
    # (The single node needs none: its embedded broker writes telemetry itself.)
    ingest_mqtt_password: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32))
    )
    mqtt_share_group: str = "iotcore"
    mqtt_shared_subscription: bool = True
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=1883, ge=0, le=65535)
    broker_max_connections: int = Field(default=20_000, ge=1)
    broker_connect_timeout_s: float = Field(
        default=10, gt=0, description="A socket that sends no CONNECT in this time is closed"
    )
    broker_max_packet_bytes: int = Field(default=1_048_576, ge=1024)
    broker_session_queue: int = Field(
        default=1000, ge=1, description="QoS 1 messages kept for one offline persistent session"
    )
    broker_session_expiry_s: int = Field(
        default=24 * 3600, ge=0, description="An offline persistent session is dropped after"
    )
    broker_pending_rows: int = Field(
        default=20_000,
        ge=1,
        description="Telemetry rows read but not yet handed to the writer before the broker "
        "stops reading the publishing clients",
    )
    mqtt_hook_token: SecretStr = SecretStr(DEV_MQTT_HOOK_TOKEN)

    # Presence (docs/api.md, "Presence"). A connected device with no sign of life (connect,
    # status message, telemetry, the embedded broker's heartbeat) for IOT_PRESENCE_STALE_S is
    # marked offline by `maintain`: keep it above the devices' keep-alive and publish interval.
    presence_stale_s: int = Field(
        default=600,
        ge=10,
        description="A connected device with no sign of life for this long is marked offline",
    )
    presence_heartbeat_s: int = Field(
        default=60,
        ge=1,
        description="How often the embedded broker confirms the devices it holds (must be "
        "well under IOT_PRESENCE_STALE_S)",
    )
    presence_check_s: int = Field(
        default=30, ge=1, description="How often `maintain` applies the staleness rule"
    )
    broker_node: str = Field(
        default="",
        description="The embedded broker's node name for presence (empty: "
        "embedded@<hostname>:<port>); a restart marks this node's devices offline",
    )

    # Identity
    jwt_keys: SecretStr = SecretStr(DEV_JWT_KEYS)
    jwt_signing_kid: str = "dev"
    jwt_issuer: str = "iotcore"
    jwt_audience: str = "iotcore-api"
    access_token_ttl_s: int = Field(default=900, ge=30)
    refresh_token_ttl_s: int = Field(default=30 * 86400, ge=60)
    # argon2id at OWASP's recommended floor (19 MiB, 2 passes, 1 lane): a login costs about
    # 25 ms of one core, so a 2-core API still serves dozens of logins a second. Raise them
    # on bigger machines; users are rehashed on their next login.
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_memory_kib: int = Field(default=19456, ge=1024)
    argon2_parallelism: int = Field(default=1, ge=1)
    login_max_failures: int = Field(default=5, ge=1)
    login_window_s: int = Field(default=900, ge=1)
    # The per-account backstop, for addresses the account never logged in from.
    login_account_max_failures: int = Field(default=100, ge=1)
    login_account_window_s: int = Field(default=3600, ge=1)
    register_max_per_ip: int = Field(default=20, ge=1)
    register_window_s: int = Field(default=3600, ge=1)
    # How long a replica believes a user's role or an API key without asking the database
    # again; revocations also reach every replica at once through Redis.
    auth_cache_ttl_s: float = Field(default=1.0, ge=0, le=1.0)
    # API keys' last_used_at is collected in memory and written this often, in one statement.
    api_key_last_used_flush_s: float = Field(default=30.0, gt=0)

    # Jobs (purges): run by `iotcore maintain` (and `iotcore run`) under a lease renewed at
    # every batch; a job whose worker died is resumed by another once the lease runs out.
    job_lease_s: int = Field(default=60, ge=2)
    job_poll_s: float = Field(default=2.0, gt=0)
    # Rows deleted per batch (one short transaction each), and a pause between batches that
    # leaves the database to the live traffic.
    purge_batch_rows: int = Field(default=5000, ge=1, le=100_000)
    job_batch_pause_s: float = Field(default=0.01, ge=0)

    # Devices
    manufacturing_keys: SecretStr = SecretStr(DEV_MANUFACTURING_KEYS)
    manufacturing_signing_key_id: str = "mk1"
    signature_skew_s: int = Field(default=300, ge=1)
    secret_rotation_grace_s: int = Field(default=86400, ge=0)
    device_cache_ttl_s: float = Field(default=5.0, ge=0)
    claim_max_failures: int = Field(default=5, ge=1)
    claim_window_s: int = Field(default=900, ge=1)

    # Telemetry
    telemetry_retention_days: int = Field(default=365, ge=1)
    telemetry_compress_after_days: int = Field(default=7, ge=1)
    # How often `maintain` refreshes the rollup hours that changed (and the schedule of
    # TimescaleDB's background refresh policies).
    telemetry_rollup_refresh_s: int = Field(default=60, ge=1)
    telemetry_max_points: int = Field(default=1000, ge=1)
    telemetry_max_metrics_per_point: int = Field(default=100, ge=1)
    telemetry_max_past_s: int = Field(default=30 * 86400, ge=0)
    telemetry_max_future_s: int = Field(default=300, ge=0)
    telemetry_max_range_days: int = Field(default=400, ge=1)
    rate_limit_fail_open: bool = True
    # Telemetry rate limits count readings (rows: one metric of one point), not requests.
    rate_limit_device_per_s: float = Field(
        default=100, gt=0, description="Readings per second a device may post over HTTP"
    )
    rate_limit_device_burst: float = Field(
        default=1000, ge=1, description="Readings a device may post at once"
    )
    rate_limit_tenant_per_s: float = Field(
        default=20_000, gt=0, description="Readings per second a tenant's devices may post"
    )
    rate_limit_tenant_burst: float = Field(
        default=50_000, ge=1, description="Readings a tenant's devices may post at once"
    )
    rate_limit_request_floor: int = Field(
        default=5,
        ge=1,
        description="Readings every telemetry request is charged at least (one with fewer "
        "still costs the server a request)",
    )
    writer_batch_rows: int = Field(default=5000, ge=1)
    writer_batch_age_ms: int = Field(default=0, ge=0)
    writer_queue_rows: int = Field(
        default=100_000, ge=1, description="Rows the writer holds queued before refusing (503)"
    )
    writer_tenant_queue_rows: int = Field(
        default=20_000,
        ge=1,
        description="Rows one tenant may hold in the write queue; over it that tenant alone "
        "gets 503 (HTTP) or waits (MQTT), and the queue is drained round-robin by tenant",
    )
    http_write_timeout_s: float = Field(default=10, gt=0)
    reject_retention_days: int = Field(default=7, ge=1)
    partitions_ahead_days: int = Field(default=7, ge=1)
    ingest_client_id: str = "iotcore-ingest-1"
    ingest_session_expiry_s: int = Field(default=12 * 3600, ge=0)
    ingest_receive_maximum: int = Field(
        default=5_000,
        ge=1,
        le=65535,
        description="Messages the consumer holds unacked before it stops reading the socket "
        "(also its MQTT 5 Receive Maximum); the broker keeps the rest",
    )
    # MQTT 3.1.1 by default: paho builds a v5 Properties object per message, which measured
    # ~20% slower and 5x the memory (loadtests/RESULTS.md). Shared subscriptions and
    # persistent sessions work on 3.1.1 with EMQX and Mosquitto; the consumer bounds what it
    # holds itself (IOT_INGEST_RECEIVE_MAXIMUM), since 3.1.1 has no Receive Maximum.
    mqtt_protocol_v5: bool = False

    @classmethod
    def variables(cls) -> frozenset[str]:
        return frozenset(f"IOT_{name.upper()}" for name in cls.model_fields)

    @field_validator("database_read_url", "emqx_api_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_presence(self) -> Settings:
        if self.presence_heartbeat_s * 2 > self.presence_stale_s:
            raise ValueError(
                "IOT_PRESENCE_HEARTBEAT_S: at most half of IOT_PRESENCE_STALE_S, or devices "
                "held by the embedded broker would be marked stale between heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _check_key_rings(self) -> Settings:
        jwt = parse_key_ring(self.jwt_keys.get_secret_value(), "IOT_JWT_KEYS")
        if self.jwt_signing_kid not in jwt:
            raise ValueError("IOT_JWT_SIGNING_KID: not a key id of IOT_JWT_KEYS")
        factory = parse_key_ring(
            self.manufacturing_keys.get_secret_value(), "IOT_MANUFACTURING_KEYS"
        )
        if self.manufacturing_signing_key_id not in factory:
            raise ValueError(
                "IOT_MANUFACTURING_SIGNING_KEY_ID: not a key id of IOT_MANUFACTURING_KEYS"
            )
        if self.env == "production":
            self._refuse_weak_secrets(jwt, factory)
        return self

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        """Settings that are valid one by one but contradict each other."""
        problems = [
            (
                self.writer_batch_rows <= self.writer_queue_rows,
                "IOT_WRITER_BATCH_ROWS: larger than IOT_WRITER_QUEUE_ROWS (a batch never fills)",
            ),
            (
                self.telemetry_max_past_s <= self.telemetry_retention_days * 86400,
                "IOT_TELEMETRY_MAX_PAST_S: accepts readings older than "
                "IOT_TELEMETRY_RETENTION_DAYS keeps",
            ),
            (
                self.telemetry_compress_after_days < self.telemetry_retention_days,
                "IOT_TELEMETRY_COMPRESS_AFTER_DAYS: not below IOT_TELEMETRY_RETENTION_DAYS "
                "(nothing would ever be compressed)",
            ),
            (
                self.access_token_ttl_s < self.refresh_token_ttl_s,
                "IOT_ACCESS_TOKEN_TTL_S: not below IOT_REFRESH_TOKEN_TTL_S",
            ),
            (
                self.job_batch_pause_s < self.job_lease_s,
                "IOT_JOB_BATCH_PAUSE_S: not below IOT_JOB_LEASE_S (the lease, renewed at "
                "every batch, would run out during the pause)",
            ),
            (
                self.emqx_api_url is None
                or bool(self.emqx_api_key and self.emqx_api_secret.get_secret_value()),
                "IOT_EMQX_API_KEY and IOT_EMQX_API_SECRET: required when IOT_EMQX_API_URL is set",
            ),
            (
                not self.mqtt_shared_subscription or bool(self.mqtt_share_group),
                "IOT_MQTT_SHARE_GROUP: required when IOT_MQTT_SHARED_SUBSCRIPTION is on",
            ),
        ]
        failed = [message for held, message in problems if not held]
        if failed:
            raise ValueError("; ".join(failed))
        return self

    def _refuse_weak_secrets(self, jwt: dict[str, str], factory: dict[str, str]) -> None:
        rings = {
            "IOT_JWT_KEYS": (jwt, DEV_JWT_KEYS),
            "IOT_MANUFACTURING_KEYS": (factory, DEV_MANUFACTURING_KEYS),
        }
        for variable, (ring, default) in rings.items():
            defaults = set(parse_key_ring(default, variable).values())
            for key_id, secret in ring.items():
                if secret in defaults or len(secret) < MIN_SECRET_LENGTH:
                    raise ValueError(
                        f"{variable}: key {key_id!r} is a default or shorter than "
                        f"{MIN_SECRET_LENGTH} characters; refusing to start in production"
                    )
        singles = {
            "IOT_MQTT_HOOK_TOKEN": (self.mqtt_hook_token, DEV_MQTT_HOOK_TOKEN),
            "IOT_INGEST_MQTT_PASSWORD": (self.ingest_mqtt_password, ""),
        }
        for variable, url in {
            "IOT_DATABASE_URL": self.database_url,
            "IOT_DATABASE_OWNER_URL": self.database_owner_url,
        }.items():
            if f":{DEV_DB_PASSWORD}@" in url:
                raise ValueError(f"{variable}: uses the development password in production")
        for variable, (value, default) in singles.items():
            secret = value.get_secret_value()
            if secret == default or len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{variable}: a default or shorter than {MIN_SECRET_LENGTH} characters; "
                    "refusing to start in production"
                )

    @property
    def jwt_key_ring(self) -> dict[str, str]:
        return parse_key_ring(self.jwt_keys.get_secret_value(), "IOT_JWT_KEYS")

    @property
    def manufacturing_key_ring(self) -> dict[str, str]:
        return parse_key_ring(self.manufacturing_keys.get_secret_value(), "IOT_MANUFACTURING_KEYS")


class UnknownVariables(ValueError):
    """IOT_* variables that no setting reads: refused in production, warned about elsewhere."""


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """IOT_* names in `environ` that are neither a setting nor a known tooling variable
    (names are matched case-insensitively, as the settings read them)."""
    known = Settings.variables() | TOOLING_VARIABLES
    names = (name.upper() for name in environ)
    return sorted(
        name
        for name in names
        if name.startswith("IOT_") and name not in known and not name.startswith(TOOLING_PREFIXES)
    )


def check_environment(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The unknown IOT_* variables, for the caller to warn about; in production a misspelt
    setting would silently leave its default in force, so it refuses to start instead."""
    unknown = unknown_variables(os.environ if environ is None else environ)
    if unknown and settings.env == "production":
        raise UnknownVariables(
            f"unknown settings {', '.join(unknown)} (misspelt, or no longer read); "
            "refusing to start in production"
        )
    return unknown


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
