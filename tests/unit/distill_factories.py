"""Completed runs for the distillation unit tests (scoring, filters, targets,
dataset writer)."""

from __future__ import annotations

import math
import random

from nex.collector.server.domain.teacher import ChatMessage, CompletedRun, TokenLogprobs

LN = math.log


def positions(*rows: tuple[str, float, list[tuple[str, float]]]) -> TokenLogprobs:
    """TokenLogprobs from (token, logprob, [(alternative, logprob), …]) rows."""
    return TokenLogprobs.from_positions(list(rows))


def make_run(
    run_id: str = "run-1",
    *,
    output: str = "hello world",
    tokens: TokenLogprobs | None = None,
    finish_reason: str = "stop",
    scores: dict[str, float] | None = None,
    provider: str = "openai",
    model: str = "gpt-test",
    output_tokens: int = 2,
    variables: dict[str, str] | None = None,
) -> CompletedRun:
    return CompletedRun(
        run_id=run_id,
        batch_id="batch-1",
        template_id="tpl-1",
        template_version=3,
        provider=provider,
        model=model,
        variables={"topic": "cats"} if variables is None else variables,
        messages=[ChatMessage("system", "Be brief."), ChatMessage("user", "Tell me about cats")],
        output_text=output,
        finish_reason=finish_reason,
        tokens=tokens,
        input_tokens=12,
        output_tokens=output_tokens,
        latency_ms=250,
        scores={} if scores is None else scores,
    )


def synthetic_runs(
    n: int, *, tokens_per_run: int = 8, top_k: int = 3, seed: int = 0, start: int = 0
) -> list[CompletedRun]:
    """Deterministic pseudo-random runs with logprobs, ids run-00000000, …"""
    rnd = random.Random(seed)
    vocab = [f"t{i}" for i in range(50)] + ["é", " the", "\n", ""]
    runs = []
    for i in range(start, start + n):
        words = [rnd.choice(vocab) for _ in range(tokens_per_run)]
        tl = TokenLogprobs(
            tokens=words,
            logprobs=[-rnd.random() * 3 for _ in words],
            top_counts=[top_k] * tokens_per_run,
            top_tokens=[rnd.choice(vocab) for _ in range(tokens_per_run * top_k)],
            top_logprobs=[-rnd.random() * 6 for _ in range(tokens_per_run * top_k)],
        )
        runs.append(
            make_run(
                f"run-{i:08d}",
                output="".join(words),
                tokens=tl,
                output_tokens=tokens_per_run,
                scores={"judge": round(rnd.random(), 3)},
                variables={"topic": f"topic {i}", "style": "plain", "a": str(i % 3)},
            )
        )
    return runs
