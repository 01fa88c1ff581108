"""Worst-case token counts of a teacher call, known before the call is made.

Rate limits (tokens/min) and hard budget caps both reserve capacity before a
call and settle it with the usage the provider reports. The reservation must be
a true upper bound, and tokenizer files cannot be downloaded at run time, so
the bound uses what holds for every tokenizer in use: no token is shorter than
one byte of UTF-8. Each message adds a few tokens of role markers and
separators (OpenAI documents 3-4 per message plus 3 per reply; Anthropic's
chat format is similar), bounded generously here.
"""

from __future__ import annotations

from collections.abc import Sequence

from nex.collector.server.domain.teacher import ChatMessage

MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 8
# When a batch sets no max_tokens the provider's default applies, which no
# bound can know: rate limiting assumes this much and corrects it with the
# usage returned; a hard budget cap needs max_tokens set instead.
DEFAULT_MAX_OUTPUT_TOKENS = 4096


def prompt_token_bound(messages: Sequence[ChatMessage]) -> int:
    """An upper bound on the prompt tokens of `messages` for any tokenizer."""
    return REQUEST_OVERHEAD_TOKENS + sum(
        len(m.role.encode()) + len(m.content.encode()) + MESSAGE_OVERHEAD_TOKENS for m in messages
    )


def output_token_bound(max_tokens: int | None) -> int:
    """The most output tokens a call may bill for."""
    return max_tokens if max_tokens else DEFAULT_MAX_OUTPUT_TOKENS
