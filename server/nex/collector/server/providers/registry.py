"""Providers by name: `build_provider` makes one, `ProviderSet` keeps one per
name for a process (bootstrap owns it and closes it on shutdown)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nex.collector.server.domain.teacher import Provider
from nex.collector.server.domain.teachers import TeacherDirectory, TeacherEndpoint, TeacherKind
from nex.collector.server.providers.anthropic_provider import AnthropicProvider
from nex.collector.server.providers.base import TeacherProvider
from nex.collector.server.providers.mock_provider import MockProvider
from nex.collector.server.providers.openai_provider import OpenAIProvider

PROVIDER_NAMES = tuple(p.value for p in Provider)


def build_provider(
    name: str,
    *,
    openai_api_key: str | None = None,
    openai_base_url: str | None = None,
    anthropic_api_key: str | None = None,
    anthropic_base_url: str | None = None,
    timeout: float = 60.0,
) -> TeacherProvider:
    """A new provider; None keys and URLs fall back to the SDKs' env vars.
    Raises ValueError for an unknown name, ProviderError when the SDK refuses
    its settings (e.g. no OpenAI key anywhere)."""
    if name == Provider.OPENAI:
        return OpenAIProvider(api_key=openai_api_key, base_url=openai_base_url, timeout=timeout)
    if name == Provider.ANTHROPIC:
        return AnthropicProvider(
            api_key=anthropic_api_key, base_url=anthropic_base_url, timeout=timeout
        )
    if name == Provider.MOCK:
        return MockProvider()
    raise ValueError(f"unknown teacher provider {name!r}; expected one of {PROVIDER_NAMES}")


def build_teacher(
    teacher: TeacherEndpoint, api_key: str | None, base_url: str | None, *, timeout: float
) -> TeacherProvider:
    """The provider for a named teacher; its `name` is the teacher's (for
    metrics and limits). An openai-compatible server without a key gets a
    placeholder (vLLM and most local servers ignore it; the SDK needs one)."""
    if teacher.kind in (TeacherKind.OPENAI, TeacherKind.OPENAI_COMPATIBLE):
        if teacher.kind is TeacherKind.OPENAI_COMPATIBLE and not api_key:
            api_key = "EMPTY"
        return OpenAIProvider(
            api_key=api_key, base_url=base_url, timeout=timeout, name=teacher.name
        )
    if teacher.kind is TeacherKind.ANTHROPIC:
        return AnthropicProvider(
            api_key=api_key, base_url=base_url, timeout=timeout, name=teacher.name
        )
    return MockProvider(name=teacher.name)


Credentials = Callable[[TeacherEndpoint], tuple[str | None, str | None]]


class ProviderSet:
    """Creates each provider on first use and shares it (one connection pool
    per provider per process)."""

    def __init__(
        self,
        *,
        openai_api_key: str | None = None,
        openai_base_url: str | None = None,
        anthropic_api_key: str | None = None,
        anthropic_base_url: str | None = None,
        timeout: float = 60.0,
        teachers: TeacherDirectory | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._teachers = teachers
        self._credentials = credentials
        self._settings = {
            "openai_api_key": openai_api_key,
            "openai_base_url": openai_base_url,
            "anthropic_api_key": anthropic_api_key,
            "anthropic_base_url": anthropic_base_url,
        }
        self._timeout = timeout
        self._providers: dict[str, TeacherProvider] = {}

    def get(self, name: str) -> TeacherProvider:
        provider = self._providers.get(name)
        if provider is None:
            teacher = self._teachers.get(name) if self._teachers is not None else None
            if teacher is not None and self._credentials is not None:
                key, url = self._credentials(teacher)
                provider = build_teacher(teacher, key, url, timeout=self._timeout)
            else:
                provider = build_provider(name, timeout=self._timeout, **self._settings)
            self._providers[str(name)] = provider
        return provider

    def add(self, provider: TeacherProvider) -> None:
        """Uses `provider` for its name (tests: a fake or a slowed-down mock)."""
        self._providers[provider.name] = provider

    async def aclose(self) -> None:
        """Closes every provider made so far, even when one fails to close."""
        providers, self._providers = list(self._providers.values()), {}
        results = await asyncio.gather(*(p.aclose() for p in providers), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
