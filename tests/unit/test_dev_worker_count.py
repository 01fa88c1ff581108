"""How many worker processes `nex-collector dev` starts when not told: one per
core this process may run on, so a fast teacher keeps every core busy, and no
more than MAX_DEFAULT_PROCESSES on a big machine."""

from __future__ import annotations

import os

import pytest

from nex.collector.server.worker.processes import MAX_DEFAULT_PROCESSES, default_count


@pytest.mark.parametrize(
    ("cores", "expected"), [(1, 1), (2, 2), (3, 3), (64, MAX_DEFAULT_PROCESSES)]
)
def test_one_worker_per_usable_core_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert default_count() == expected
