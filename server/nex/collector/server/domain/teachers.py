"""Named teacher endpoints: what a batch's `provider` names.

Operators declare them in TEACHERS_FILE (parsed in config.py); `openai`,
`anthropic` and `mock` exist with no file at all. Pure data: no key ever lives
here, only the *name* of the environment variable that holds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.limits import MAX_TOP_LOGPROBS


class TeacherKind(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai-compatible"
    MOCK = "mock"


@dataclass(frozen=True, slots=True)
class TeacherLimits:
    """What the operator allows per minute; None: learn it from the provider."""

    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    max_in_flight: int | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None for v in (self.requests_per_min, self.tokens_per_min, self.max_in_flight)
        )


@dataclass(frozen=True, slots=True)
class Capabilities:
    logprobs: bool = True
    max_top_logprobs: int = MAX_TOP_LOGPROBS


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input / output tokens."""

    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True, slots=True)
class BatchSupport:
    """A teacher's Batch API: whether batches may use it (EXECUTION_MODE_PROVIDER_BATCH
    / AUTO), the most requests and input bytes one provider job holds, and the
    batch price as a fraction of the online price."""

    supported: bool = False
    max_requests: int = 0
    max_bytes: int = 0
    price_factor: float = 1.0


# The vendors' published limits and discount (50 % of the online price).
OPENAI_BATCH = BatchSupport(True, 50_000, 200 * 1024 * 1024, 0.5)
ANTHROPIC_BATCH = BatchSupport(True, 100_000, 256 * 1024 * 1024, 0.5)
NO_BATCH = BatchSupport()
# The mock plays one offline (OpenAI's limits and discount), for demos and tests.
MOCK_BATCH = OPENAI_BATCH


def default_batch_support(kind: TeacherKind) -> BatchSupport:
    """OpenAI, Anthropic and the mock have Batch APIs; an OpenAI-compatible
    server may (its teachers-file entry says so)."""
    if kind is TeacherKind.OPENAI:
        return OPENAI_BATCH
    if kind is TeacherKind.ANTHROPIC:
        return ANTHROPIC_BATCH
    if kind is TeacherKind.MOCK:
        return MOCK_BATCH
    return NO_BATCH


@dataclass(frozen=True, slots=True)
class TeacherEndpoint:
    name: str
    kind: TeacherKind
    base_url: str | None = None
    api_key_env: str | None = None
    limits: TeacherLimits = field(default_factory=TeacherLimits)
    capabilities: Capabilities = field(default_factory=Capabilities)
    prices: Mapping[str, Price] = field(default_factory=dict)
    daily_max_cost_usd: float | None = None
    batch: BatchSupport = NO_BATCH
    # Why this teacher cannot be called here (e.g. no key); None: it can.
    problem: str | None = None

    @property
    def limited(self) -> bool:
        """Whether calls go through the shared limiter. A mock with no limits
        never throttles, so it skips it; every real API learns its limits."""
        return self.kind is not TeacherKind.MOCK or self.limits.any


# Anthropic returns no logprobs; a batch asking for them is accepted as it
# always was (its runs have no tokens), not refused.
_ANTHROPIC_CAPABILITIES = Capabilities(logprobs=False, max_top_logprobs=MAX_TOP_LOGPROBS)


def builtin_teachers(
    *, openai_problem: str | None, anthropic_problem: str | None
) -> dict[str, TeacherEndpoint]:
    """The teachers that exist with no file, configured as before: the SDKs'
    own OPENAI_* / ANTHROPIC_* variables."""
    return {
        "openai": TeacherEndpoint(
            "openai",
            TeacherKind.OPENAI,
            api_key_env="OPENAI_API_KEY",
            batch=OPENAI_BATCH,
            problem=openai_problem,
        ),
        "anthropic": TeacherEndpoint(
            "anthropic",
            TeacherKind.ANTHROPIC,
            api_key_env="ANTHROPIC_API_KEY",
            capabilities=_ANTHROPIC_CAPABILITIES,
            batch=ANTHROPIC_BATCH,
            problem=anthropic_problem,
        ),
        "mock": TeacherEndpoint("mock", TeacherKind.MOCK, batch=MOCK_BATCH),
    }


def default_capabilities(kind: TeacherKind) -> Capabilities:
    return _ANTHROPIC_CAPABILITIES if kind is TeacherKind.ANTHROPIC else Capabilities()


class TeacherDirectory:
    """The teachers of a deployment, by name, in declaration order."""

    def __init__(self, teachers: Mapping[str, TeacherEndpoint]) -> None:
        self._teachers = dict(teachers)

    def __iter__(self) -> Iterator[TeacherEndpoint]:
        return iter(self._teachers.values())

    def __len__(self) -> int:
        return len(self._teachers)

    def get(self, name: str) -> TeacherEndpoint | None:
        return self._teachers.get(name)

    def daily_cap(self, name: str) -> float | None:
        """The teacher's daily spending cap in USD, when its file sets one."""
        teacher = self.get(name)
        return teacher.daily_max_cost_usd if teacher is not None else None

    @property
    def names(self) -> list[str]:
        return list(self._teachers)

    def check(self, v: Violations, field: str, name: str, top_logprobs: int | None) -> None:
        """INVALID_ARGUMENT material: an unknown teacher, or more top_logprobs
        than it returns; each message names the allowed values."""
        teacher = self._teachers.get(name)
        if teacher is None:
            v.add(field, f"unknown teacher {name!r}; must be one of {', '.join(self.names)}")
            return
        if top_logprobs:
            caps = teacher.capabilities
            if top_logprobs > caps.max_top_logprobs:
                v.add(
                    "params.top_logprobs",
                    f"teacher {name!r} accepts at most {caps.max_top_logprobs}; "
                    f"allowed: 0-{caps.max_top_logprobs}",
                )
