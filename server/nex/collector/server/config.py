"""The only place the environment is read."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class IntegrationMode(StrEnum):
    STANDALONE = "standalone"
    INTEGRATED = "integrated"


class ConfigError(Exception):
    """The configuration cannot work; the message says what to change."""


class Settings(BaseSettings):
    """Every knob of the service, from environment variables (names as in the README)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    # Connections each process keeps to PostgreSQL, and how many more it may open
    # under a burst (a worker with WORKER_MAX_JOBS jobs shares these).
    database_pool_size: int = Field(default=10, validation_alias="DATABASE_POOL_SIZE", ge=1)
    database_max_overflow: int = Field(default=10, validation_alias="DATABASE_MAX_OVERFLOW", ge=0)
    data_dir: Path = Field(default=Path(".data"), validation_alias="DATA_DIR")
    addr: str = Field(default="127.0.0.1:50051", validation_alias="NEX_COLLECTOR_ADDR")
    tokens_csv: str = Field(default="", validation_alias="NEX_COLLECTOR_TOKENS")
    allow_anonymous: bool = Field(default=False, validation_alias="NEX_COLLECTOR_ALLOW_ANONYMOUS")
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, validation_alias="MAX_REQUEST_BYTES", ge=64 * 1024
    )
    tls_cert: Path | None = Field(default=None, validation_alias="NEX_COLLECTOR_TLS_CERT")
    tls_key: Path | None = Field(default=None, validation_alias="NEX_COLLECTOR_TLS_KEY")
    tls_ca: str | None = Field(default=None, validation_alias="NEX_COLLECTOR_TLS_CA")

    mode: IntegrationMode = Field(
        default=IntegrationMode.STANDALONE, validation_alias="MODE_INTEGRATION"
    )
    nex_base_url: str | None = Field(default=None, validation_alias="NEX_BASE_URL")
    nex_api_token: SecretStr | None = Field(default=None, validation_alias="NEX_API_TOKEN")
    nex_timeout_s: float = Field(default=5.0, validation_alias="NEX_TIMEOUT_S", gt=0)

    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, validation_alias="ANTHROPIC_BASE_URL")
    teacher_timeout_s: float = Field(default=60.0, validation_alias="TEACHER_TIMEOUT_S", gt=0)
    teacher_max_attempts: int = Field(default=4, validation_alias="TEACHER_MAX_ATTEMPTS", ge=1)

    template_cpu_s: float = Field(default=5.0, validation_alias="TEMPLATE_CPU_S", gt=0, le=300)
    template_memory_mb: int = Field(
        default=1024, validation_alias="TEMPLATE_MEMORY_MB", ge=128, le=65536
    )
    template_processes: int = Field(default=2, validation_alias="TEMPLATE_PROCESSES", ge=1, le=64)

    worker_max_jobs: int = Field(default=256, validation_alias="WORKER_MAX_JOBS", ge=1)
    # How long a worker may stay silent before its runs and jobs are taken back
    # (its heartbeat renews it several times per lease).
    run_lease_s: float = Field(default=30.0, validation_alias="RUN_LEASE_S", gt=0)
    max_worker_losses: int = Field(default=10, validation_alias="MAX_WORKER_LOSSES", ge=1)
    reconcile_interval_s: float = Field(default=10.0, validation_alias="RECONCILE_INTERVAL_S", gt=0)
    dataset_lease_s: float = Field(default=60.0, validation_alias="DATASET_LEASE_S", gt=0)
    watch_heartbeat_s: float = Field(default=5.0, validation_alias="WATCH_HEARTBEAT_S", gt=0)
    metrics_addr: str | None = Field(default=None, validation_alias="METRICS_ADDR")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_json: bool = Field(default=False, validation_alias="LOG_JSON")

    @field_validator("metrics_addr")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if not value:
            return None
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port (e.g. 0.0.0.0:9464), got {value!r}")
        return value

    @field_validator("allow_anonymous", mode="before")
    @classmethod
    def _empty_is_false(cls, value: object) -> object:
        return False if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "NEX_COLLECTOR_TLS_CERT and NEX_COLLECTOR_TLS_KEY go together: set both "
                "(PEM certificate chain and private key) to serve TLS, or neither"
            )
        return self

    @model_validator(mode="after")
    def _integrated_needs_nex(self) -> Settings:
        if self.mode is IntegrationMode.INTEGRATED and not self.nex_base_url:
            raise ValueError(
                "MODE_INTEGRATION=integrated needs NEX_BASE_URL (the NEX API, e.g. "
                "https://nex.example.com); set it or use MODE_INTEGRATION=standalone"
            )
        return self

    @property
    def tokens(self) -> frozenset[str]:
        """Accepted bearer tokens; empty means authentication is off."""
        return frozenset(t.strip() for t in self.tokens_csv.split(",") if t.strip())

    @property
    def worker_heartbeat_s(self) -> float:
        """How often a worker renews its lease: a few beats per lease."""
        return min(5.0, self.run_lease_s / 4)

    @property
    def anonymous_exposure(self) -> str | None:
        """Why serving as configured would let anyone on the network in, or None.

        A loopback (or unix socket) address with no tokens is the dev default; a
        network address with no tokens needs NEX_COLLECTOR_ALLOW_ANONYMOUS=true."""
        if self.tokens or self.allow_anonymous or is_loopback(self.addr):
            return None
        return (
            f"{self.addr} is reachable from the network and NEX_COLLECTOR_TOKENS is empty: "
            "set NEX_COLLECTOR_TOKENS, listen on 127.0.0.1, or set "
            "NEX_COLLECTOR_ALLOW_ANONYMOUS=true to accept calls without a token"
        )

    @property
    def embedded(self) -> bool:
        """Whether PostgreSQL and Redis are started in the data directory."""
        return self.database_url is None and self.redis_url is None

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"


def is_loopback(addr: str) -> bool:
    """Whether a gRPC listen address (host:port, [v6]:port, unix:path) is local only."""
    if addr.startswith(("unix:", "unix-abstract:")):
        return True
    host = addr.rsplit(":", 1)[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, "", "*": may resolve to any interface
        return False


class ClientSettings(BaseSettings):
    """What the CLI's client commands read: where the collector is and how to
    reach it, nothing of the server's own configuration (a shell set up for
    `MODE_INTEGRATION=integrated` without NEX_BASE_URL can still list batches)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    addr: str = Field(default="127.0.0.1:50051", validation_alias="NEX_COLLECTOR_ADDR")
    token: str | None = Field(default=None, validation_alias="NEX_COLLECTOR_TOKEN")
    tokens_csv: str = Field(default="", validation_alias="NEX_COLLECTOR_TOKENS")
    tls_ca: str | None = Field(default=None, validation_alias="NEX_COLLECTOR_TLS_CA")
    data_dir: Path = Field(default=Path(".data"), validation_alias="DATA_DIR")

    @property
    def default_token(self) -> str | None:
        """NEX_COLLECTOR_TOKEN, else the first of NEX_COLLECTOR_TOKENS as written."""
        if self.token:
            return self.token
        return next((t.strip() for t in self.tokens_csv.split(",") if t.strip()), None)


def load_settings(**overrides: object) -> Settings:
    """Reads the environment (overrides win); a bad setting is a ConfigError."""
    return _load(Settings, overrides)


def load_client_settings(**overrides: object) -> ClientSettings:
    """The client commands' settings; a bad one is a ConfigError."""
    return _load(ClientSettings, overrides)


_S = TypeVar("_S", bound=BaseSettings)


def _load(kind: type[_S], overrides: dict[str, object]) -> _S:
    from pydantic import ValidationError

    try:
        return kind(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from None
