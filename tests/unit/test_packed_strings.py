"""PackedStrings: token texts held joined, read like a list."""

from __future__ import annotations

import pytest

from nex.collector.server.domain.teacher import TOKEN_SEPARATOR, PackedStrings

S = TOKEN_SEPARATOR


@pytest.mark.parametrize(
    ("joined", "length", "items"),
    [("", 0, []), ("", 1, [""]), (f"a{S}b{S}", 3, ["a", "b", ""]), ("é😀", 1, ["é😀"])],
)
def test_reads_like_the_list_it_packs(joined: str, length: int, items: list[str]) -> None:
    packed = PackedStrings(joined, length)
    assert PackedStrings.fits(joined, length)
    assert len(packed) == length and list(packed) == items and packed == items
    assert packed[-1:] == items[-1:]


def test_fits_refuses_a_separator_inside_a_string() -> None:
    assert not PackedStrings.fits(f"a{S}b", 1)  # one string "a\x1fb": ambiguous
    assert not PackedStrings.fits("x", 0)
    assert PackedStrings("x", 1) != ["y"]
