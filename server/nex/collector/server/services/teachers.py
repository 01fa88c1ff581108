"""Use case of ListTeachers: the deployment's teachers with their live usage.
Never a secret: a teacher shows the *name* of its key variable at most."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nex.collector.server.domain.teachers import (
    Price,
    TeacherDirectory,
    TeacherEndpoint,
    TeacherKind,
)
from nex.collector.server.limiter import RateLimiter, Usage
from nex.collector.server.providers.pricing import PRICES


@dataclass(frozen=True, slots=True)
class TeacherView:
    teacher: TeacherEndpoint
    prices: dict[str, Price]
    usage: Usage


class TeacherEndpoints:
    def __init__(self, teachers: TeacherDirectory, limiter: RateLimiter | None) -> None:
        self._teachers = teachers
        self._limiter = limiter

    async def list_teachers(self) -> list[TeacherView]:
        teachers = list(self._teachers)
        if self._limiter is not None:
            usages = await asyncio.gather(*(self._limiter.usage(t.name) for t in teachers))
        else:
            usages = [Usage() for _ in teachers]
        return [
            TeacherView(t, _prices(t), usage) for t, usage in zip(teachers, usages, strict=True)
        ]


def _prices(teacher: TeacherEndpoint) -> dict[str, Price]:
    """The file's prices, over the vendor's list prices for openai / anthropic kinds."""
    listed: dict[str, Price] = {}
    if teacher.kind in (TeacherKind.OPENAI, TeacherKind.ANTHROPIC):
        listed = {
            model: Price(p.input_per_mtok, p.output_per_mtok)
            for model, p in PRICES.get(teacher.kind.value, {}).items()
        }
    listed.update(teacher.prices)
    return listed
