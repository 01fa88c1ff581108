"""What the CLI draws from a dataset: score quantiles, a histogram, the runs
dropped per filter."""

from __future__ import annotations

import re

from rich.console import Console

from nex.collector.client import DatasetCounts, DatasetManifest, DatasetStatus, FilterDrop
from nex.collector.server.cli.render import drops_table, histogram, quantiles


def test_quantiles_and_histogram() -> None:
    assert quantiles([4.0, 1.0, 3.0, 2.0, 5.0]) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert quantiles([0.0, 10.0]) == [0.0, 2.5, 5.0, 7.5, 10.0]
    console = Console(width=100, record=True)
    console.print(histogram("s", [0.0, 0.1, 0.1, 1.0], bins=4, width=8))
    text = console.export_text()
    assert "s: 4 values" in text and "████████ 3" in text  # the fullest bar is full width
    console.print(histogram("same", [2.0, 2.0], bins=10))  # one value: one bar, no crash
    assert "2" in console.export_text()


def test_drops_per_filter_are_counts_not_negative_numbers() -> None:
    manifest = DatasetManifest(
        id="ds_1",
        name="n",
        version="v1",
        status=DatasetStatus.READY,
        counts=DatasetCounts(
            total=12,
            kept=5,
            dropped=(
                FilterDrop(index=0, filter="length(min_chars=1)", dropped=0),
                FilterDrop(index=1, filter="boolean(finish_reason_stop)", dropped=7),
            ),
        ),
    )
    console = Console(width=100, record=True)
    console.print(drops_table(manifest))
    text = console.export_text()
    assert re.search(r"boolean\(finish_reason_stop\)\s+│\s+7 ", text), text
    assert "-7" not in text
