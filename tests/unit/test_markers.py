"""Every test folder has its marker, registered, so `-m` selections (and
`make test-fast`) never miss a folder silently."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.conftest import FOLDER_MARKERS

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_folder_has_a_registered_marker() -> None:
    folders = {p.parent.relative_to(TESTS).parts[0] for p in TESTS.rglob("test_*.py")}
    assert folders == set(FOLDER_MARKERS)
    config = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["pytest"]
    registered = {line.split(":", 1)[0] for line in config["ini_options"]["markers"]}
    assert registered == set(FOLDER_MARKERS)
    assert "--strict-markers" in config["ini_options"]["addopts"]


def test_this_test_carries_its_folders_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("e2e") is None
