"""The byte bounds that keep replies sendable are true upper bounds of the
protobuf encoding, and a page always holds at least one item."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nex.collector.server.api import convert
from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.runs import Run, RunError, RunStatus
from nex.collector.server.domain.sizes import (
    check_output_size,
    page_cut,
    run_bytes,
    template_bytes,
)
from nex.collector.server.domain.teacher import ChatMessage, GenerationParams, TokenLogprobs
from nex.collector.server.domain.templates import PromptTemplate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_page_holds_at_least_one_item_then_what_fits() -> None:
    assert page_cut([]) == 0
    assert page_cut([10], budget=5) == 1
    assert page_cut([3, 3, 3], budget=6) == 2
    assert page_cut([3, 3, 3], budget=9) == 3
    assert page_cut([100, 1, 1], budget=50) == 1


def test_run_bytes_bound_the_encoded_run() -> None:
    tokens = TokenLogprobs(
        tokens=["héllo", " wörld"] * 50,
        logprobs=[-0.5] * 100,
        top_counts=[2] * 100,
        top_tokens=["a", "ß"] * 100,
        top_logprobs=[-1.0] * 200,
    )
    run = Run(
        id="run_" + "x" * 26,
        batch_id="bat_" + "y" * 26,
        status=RunStatus.COMPLETED,
        variables={"tópic": "ü" * 500, "k": ""},
        messages=[ChatMessage("system", "be kind"), ChatMessage("user", "€" * 1000)],
        request_id="r" * 128,
        attempt=3,
        create_time=NOW,
        error=RunError("RATE_LIMITED", "slow down " * 20),
        output_text="done " * 200,
        finish_reason="stop",
        has_logprobs=True,
        tokens=tokens,
        scores={"len": 1.0, "entropy": 0.25},
        start_time=NOW,
        end_time=NOW,
    )
    assert convert.run(run).ByteSize() <= run_bytes(run)
    empty = Run("r", "b", RunStatus.QUEUED, {}, [], "", 0, NOW)
    assert convert.run(empty).ByteSize() <= run_bytes(empty)


def test_template_bytes_bound_the_encoded_template() -> None:
    t = PromptTemplate("tpl_1", "ñame", 7, "sys " * 100, "{{ a }} " * 300, ("a", "b"), "ctx_1", NOW)
    assert convert.template(t).ByteSize() <= template_bytes(t)


@pytest.mark.parametrize(
    ("max_tokens", "top_logprobs", "ok"),
    [
        (None, None, True),
        (None, 20, True),  # the default bound of 4,096 output tokens
        (1_000_000, None, True),
        (1_000_000, 0, True),
        (95_238, 20, True),
        (95_239, 20, False),
        (1_000_000, 1, True),
        (1_000_000, 2, False),
    ],
)
def test_a_batch_whose_runs_could_not_be_returned_is_refused(
    max_tokens: int | None, top_logprobs: int | None, ok: bool
) -> None:
    v = Violations()
    check_output_size(
        v, "params", GenerationParams(max_tokens=max_tokens, top_logprobs=top_logprobs)
    )
    assert (not v.items) is ok
    assert all(x.field == "params.max_tokens" for x in v.items)
