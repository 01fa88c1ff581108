"""Answers send token texts joined by U+001F for PostgreSQL's string_to_array to
split (db/answers.py). Any list of texts either comes back exactly or is sent
as an array: never a wrong split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nex.collector.server.db.answers import _joined
from nex.collector.server.domain.teacher import TOKEN_SEPARATOR


def _string_to_array(joined: str) -> list[str]:
    """PostgreSQL's string_to_array(joined, E'\\x1f'): "" is the empty array."""
    return [] if joined == "" else joined.split(TOKEN_SEPARATOR)


@given(st.lists(st.text(alphabet=st.sampled_from(["a", "é", "😀", TOKEN_SEPARATOR])), max_size=6))
def test_joined_texts_split_back_exactly_or_are_not_joined(values: list[str]) -> None:
    joined = _joined(values)
    if joined is False:
        assert _string_to_array(TOKEN_SEPARATOR.join(values)) != values
    else:
        assert isinstance(joined, str) and _string_to_array(joined) == values


def test_no_texts_stay_null() -> None:
    assert _joined(None) is None
