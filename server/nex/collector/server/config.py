"""The only place the environment is read."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nex.collector.server.domain.limits import MAX_TOP_LOGPROBS
from nex.collector.server.domain.teachers import (
    OPENAI_BATCH,
    BatchSupport,
    Capabilities,
    Price,
    TeacherDirectory,
    TeacherEndpoint,
    TeacherKind,
    TeacherLimits,
    builtin_teachers,
    default_batch_support,
    default_capabilities,
)


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
    # Where datasets live: file:///abs/path or s3://bucket/prefix (any
    # S3-compatible store); unset: DATA_DIR/datasets on the local disk.
    datasets_uri: str | None = Field(default=None, validation_alias="DATASETS_URI")
    # The S3 endpoint (MinIO, Ceph, R2, moto: http(s)://host:port); unset: the
    # AWS SDK's variables below, else AWS itself.
    datasets_s3_endpoint: str | None = Field(default=None, validation_alias="DATASETS_S3_ENDPOINT")
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    aws_endpoint_url_s3: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL_S3")
    aws_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY"
    )
    aws_session_token: SecretStr | None = Field(default=None, validation_alias="AWS_SESSION_TOKEN")
    aws_region: str | None = Field(default=None, validation_alias="AWS_REGION")
    aws_default_region: str | None = Field(default=None, validation_alias="AWS_DEFAULT_REGION")
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
    teachers_file: Path | None = Field(default=None, validation_alias="TEACHERS_FILE")

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
    # Provider batch jobs: how often a worker looks for work, the first poll of
    # a submitted job (doubling up to the max), results stored per transaction,
    # and how long before an AUTO batch's deadline its jobs give up.
    provider_job_tick_s: float = Field(default=5.0, validation_alias="PROVIDER_JOB_TICK_S", gt=0)
    provider_job_poll_s: float = Field(default=30.0, validation_alias="PROVIDER_JOB_POLL_S", gt=0)
    provider_job_max_poll_s: float = Field(
        default=600.0, validation_alias="PROVIDER_JOB_MAX_POLL_S", gt=0
    )
    provider_job_ingest_chunk: int = Field(
        default=500, validation_alias="PROVIDER_JOB_INGEST_CHUNK", ge=1
    )
    # A provider job whose steps (upload, create, poll) failed this many times
    # in a row is given up, its runs tried again or failed with the error.
    provider_job_max_step_failures: int = Field(
        default=8, validation_alias="PROVIDER_JOB_MAX_STEP_FAILURES", ge=1
    )
    provider_deadline_margin_s: float = Field(
        default=1800.0, validation_alias="PROVIDER_DEADLINE_MARGIN_S", ge=0
    )
    watch_heartbeat_s: float = Field(default=5.0, validation_alias="WATCH_HEARTBEAT_S", gt=0)
    # Live events each server process keeps per watched batch; a watcher that
    # falls further behind is ended with ABORTED and resumes by revision.
    watch_buffer_events: int = Field(
        default=10_000, validation_alias="WATCH_BUFFER_EVENTS", ge=100, le=10_000_000
    )
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

    @field_validator("datasets_uri")
    @classmethod
    def _datasets_uri(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("file://", "s3://")):
            raise ValueError(f"must be file:///absolute/path or s3://bucket/prefix, got {value!r}")
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

    @property
    def datasets_location(self) -> str:
        """DATASETS_URI, or the file:// uri of DATA_DIR/datasets."""
        return self.datasets_uri or self.datasets_dir.resolve().as_uri()

    def storage_env(self) -> dict[str, str]:
        """The AWS variables the object store reads, as set (secrets revealed)."""
        values = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.aws_endpoint_url_s3,
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key.get_secret_value()
            if self.aws_secret_access_key
            else None,
            "AWS_SESSION_TOKEN": self.aws_session_token.get_secret_value()
            if self.aws_session_token
            else None,
            "AWS_REGION": self.aws_region,
            "AWS_DEFAULT_REGION": self.aws_default_region,
        }
        return {k: v for k, v in values.items() if v}


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
        # Any: each override is validated by pydantic, which reports a bad one.
        return kind(**cast("dict[str, Any]", overrides))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from None


# -- TEACHERS_FILE ---------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LimitsSpec(_Strict):
    requests_per_min: int | None = Field(default=None, gt=0)
    tokens_per_min: int | None = Field(default=None, gt=0)
    max_in_flight: int | None = Field(default=None, gt=0)


class _CapabilitiesSpec(_Strict):
    logprobs: bool | None = None
    max_top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class _PriceSpec(_Strict):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class _BatchSpec(_Strict):
    supported: bool | None = None
    max_requests: int | None = Field(default=None, gt=0)
    max_bytes: int | None = Field(default=None, gt=0)
    price_factor: float | None = Field(default=None, gt=0, le=1)


class _TeacherSpec(_Strict):
    kind: Literal["openai", "anthropic", "openai-compatible", "mock"]
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    limits: _LimitsSpec = _LimitsSpec()
    capabilities: _CapabilitiesSpec = _CapabilitiesSpec()
    prices: dict[str, _PriceSpec] = {}
    daily_max_cost_usd: float | None = Field(default=None, gt=0)
    batch: _BatchSpec = _BatchSpec()

    @model_validator(mode="after")
    def _compatible_needs_url(self) -> _TeacherSpec:
        if self.kind == "openai-compatible" and not self.base_url:
            raise ValueError(
                "kind openai-compatible needs base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        return self


class _TeachersFileSpec(_Strict):
    teachers: dict[str, _TeacherSpec]


_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_TEACHER_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


def _builtins(settings: Settings) -> dict[str, TeacherEndpoint]:
    return builtin_teachers(
        openai_problem=None
        if settings.openai_api_key
        else "the server has no OPENAI_API_KEY; set it to use provider 'openai'",
        anthropic_problem=None
        if settings.anthropic_api_key
        else "the server has no ANTHROPIC_API_KEY; set it to use provider 'anthropic'",
    )


def load_teachers(settings: Settings) -> TeacherDirectory:
    """The deployment's teachers: the built-in three, overridden or joined by
    those of TEACHERS_FILE. A file that cannot be read or parsed, or that
    names a key variable that is not set, is a ConfigError (one line)."""
    import re

    from pydantic import ValidationError

    teachers = _builtins(settings)
    path = settings.teachers_file
    if path is None:
        return TeacherDirectory(teachers)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"TEACHERS_FILE {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"TEACHERS_FILE {path}: not valid TOML ({exc})") from None
    try:
        spec = _TeachersFileSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"TEACHERS_FILE {path}: {where}: {first['msg']}") from None
    for name, t in spec.teachers.items():
        if not re.match(_TEACHER_NAME, name):
            raise ConfigError(
                f"TEACHERS_FILE {path}: teachers.{name}: a teacher name is 1-63 of a-z 0-9 . _ -"
            )
        kind = TeacherKind(t.kind)
        key_env = t.api_key_env or _DEFAULT_KEY_ENV.get(t.kind)
        if key_env and not os.environ.get(key_env):
            raise ConfigError(
                f"TEACHERS_FILE {path}: teachers.{name}.api_key_env names {key_env}, which is "
                "not set; export it (the key itself never goes in the file)"
            )
        caps = default_capabilities(kind)
        teachers[name] = TeacherEndpoint(
            name=name,
            kind=kind,
            base_url=t.base_url,
            api_key_env=key_env,
            limits=TeacherLimits(**t.limits.model_dump()),
            capabilities=Capabilities(
                logprobs=caps.logprobs
                if t.capabilities.logprobs is None
                else t.capabilities.logprobs,
                max_top_logprobs=caps.max_top_logprobs
                if t.capabilities.max_top_logprobs is None
                else t.capabilities.max_top_logprobs,
            ),
            prices={m: Price(p.input_per_mtok, p.output_per_mtok) for m, p in t.prices.items()},
            daily_max_cost_usd=t.daily_max_cost_usd,
            batch=_batch_support(kind, t.batch),
        )
    return TeacherDirectory(teachers)


def _batch_support(kind: TeacherKind, spec: _BatchSpec) -> BatchSupport:
    """The kind's defaults (OpenAI, Anthropic, the mock: supported at half
    price), with what the teachers file sets."""
    base = default_batch_support(kind)
    supported = base.supported if spec.supported is None else spec.supported
    # An openai-compatible server that says it has /v1/batches speaks OpenAI's limits.
    limits = OPENAI_BATCH if kind is TeacherKind.OPENAI_COMPATIBLE else base
    return BatchSupport(
        supported=supported,
        max_requests=spec.max_requests or limits.max_requests,
        max_bytes=spec.max_bytes or limits.max_bytes,
        price_factor=spec.price_factor or limits.price_factor,
    )


def teacher_credentials(
    settings: Settings, teacher: TeacherEndpoint
) -> tuple[str | None, str | None]:
    """(api key, base URL) for a teacher's SDK client. The built-in `openai` and
    `anthropic` keep reading OPENAI_* / ANTHROPIC_* through Settings."""
    if (
        teacher.name == "openai"
        and teacher.base_url is None
        and teacher.api_key_env == "OPENAI_API_KEY"
    ):
        key = settings.openai_api_key
        return (key.get_secret_value() if key else None), settings.openai_base_url
    if (
        teacher.name == "anthropic"
        and teacher.base_url is None
        and teacher.api_key_env == "ANTHROPIC_API_KEY"
    ):
        key = settings.anthropic_api_key
        return (key.get_secret_value() if key else None), settings.anthropic_base_url
    key_value = os.environ.get(teacher.api_key_env) if teacher.api_key_env else None
    return key_value, teacher.base_url
