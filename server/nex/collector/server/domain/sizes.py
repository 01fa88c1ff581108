"""Byte caps that keep every reply sendable, checked before anything is committed.

A reply that cannot be sent after its call committed is the worst answer a
service can give: the caller sees RESOURCE_EXHAUSTED and retries, the work is
done (and paid for) anyway, and if the stored rows are too big for a reply, the
reads that list them fail forever. So what one call may create is capped, and a
list page is cut by bytes as well as by count.

Sizes here are upper bounds of the protobuf encoding, computed from the domain
objects: UTF-8 bytes of every string plus a fixed allowance per field (a tag of
at most 2 bytes, a length of at most 5, and the wrapper of a map entry or a
nested message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.estimates import output_token_bound
from nex.collector.server.domain.runs import Run
from nex.collector.server.domain.teacher import ChatMessage, GenerationParams
from nex.collector.server.domain.templates import PromptTemplate

MiB = 1024 * 1024

# Variables plus the rendered prompt of one run: both are stored and both come
# back in GetRun/ListRuns. 2 MiB holds a prompt of ~500k tokens with room to
# spare, and keeps the full view of a run under the 4 MiB a default gRPC
# client (Go, Java, grpcurl) receives, unless its output is itself huge.
MAX_RUN_INPUT_BYTES = 2 * MiB
# The same, summed over one BatchCreateRuns call: bounds one transaction and
# the memory of one call. A request is at most MAX_REQUEST_BYTES (4 MiB by
# default); this allows a template to amplify it four times over.
MAX_CALL_INPUT_BYTES = 16 * MiB
# A list page stops growing once its items reach this many bytes (it always
# holds at least one item, so every stored item can be listed).
PAGE_BYTES = 4 * MiB

# Output token positions of one run, counting each top alternative as one:
# max_tokens x (1 + top_logprobs). At the ~24 bytes a position takes in the
# full view (a token of a few bytes, its logprob, the framing), 2,000,000 make
# ~48 MiB, under the 64 MiB a reply may be. 20 alternatives still allow
# 95,238 output tokens; none allow a million.
MAX_OUTPUT_POSITIONS = 2_000_000

FIELD = 16  # allowance per field: tag, length, and an entry or message wrapper
RECORD = 256  # ids, enums, numbers and timestamps of one resource


def check_output_size(v: Violations, field: str, params: GenerationParams) -> None:
    """A batch whose runs could return more logprobs than one reply holds is
    refused when it is created, not when its runs are read."""
    positions = output_token_bound(params.max_tokens) * (1 + (params.top_logprobs or 0))
    if positions > MAX_OUTPUT_POSITIONS:
        v.add(
            f"{field}.max_tokens",
            f"max_tokens x (1 + top_logprobs) must be at most {MAX_OUTPUT_POSITIONS:,} "
            f"so that a run with its logprobs fits in one reply; got {positions:,}",
        )


def _text(value: str) -> int:
    return len(value.encode()) + FIELD


def input_bytes(variables: Mapping[str, str], messages: Sequence[ChatMessage]) -> int:
    """What a run's variables and rendered prompt add to every full view of it."""
    return sum(_text(k) + _text(v) for k, v in variables.items()) + sum(
        _text(m.role) + _text(m.content) for m in messages
    )


def run_bytes(run: Run) -> int:
    """An upper bound of the encoded TeacherRun (the view `run` was read in)."""
    size = RECORD + input_bytes(run.variables, run.messages) + _text(run.output_text)
    size += _text(run.finish_reason) + _text(run.request_id)
    size += sum(_text(name) + 8 + FIELD for name in run.scores)
    if run.error is not None:
        size += _text(run.error.code) + _text(run.error.message)
    if run.tokens is not None:
        t = run.tokens
        size += sum(_text(x) + 8 + FIELD for x in t.tokens)
        size += sum(_text(x) + 8 + FIELD for x in t.top_tokens)
    return size


def template_bytes(template: PromptTemplate) -> int:
    return (
        RECORD
        + _text(template.name)
        + _text(template.system_template)
        + _text(template.user_template)
        + sum(_text(v) for v in template.variables)
    )


def page_cut(sizes: Sequence[int], budget: int = PAGE_BYTES) -> int:
    """How many leading items (of these byte sizes) one page holds: at least
    one, then as many as keep the total within `budget`."""
    total = 0
    for i, size in enumerate(sizes):
        total += size
        if i and total > budget:
            return i
    return len(sizes)


def input_size(value: int) -> str:
    """A byte count for messages: '2.0 MiB', '512.0 KiB'."""
    return f"{value / MiB:.1f} MiB" if value >= MiB else f"{value / 1024:.1f} KiB"


# One Arrow IPC message of ReadDataset: record batches are cut to stay within
# this (a single row larger than it goes alone, up to the reply limit), so the
# stream suits a default gRPC client's 4 MiB receive limit.
READ_MESSAGE_BYTES = 4 * MiB - 64 * 1024
