"""Teacher endpoints from TEACHERS_FILE, end to end: a local OpenAI-compatible
server and OpenAI in one deployment, ListTeachers never showing a key, bad
requests named precisely, and a bad file refused at start-up in one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nex.collector.client import (
    BatchStatus,
    Client,
    GenerationParams,
    InvalidArgumentError,
    PromptTemplate,
    TeacherKind,
    connect,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import TEACHER_KEY, unique
from tests.e2e.test_startup import nex_collector, refused
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings

KEY_ENV = "NEXC_TEST_TEACHER_KEY"


def teachers_toml(openai_url: str, local_url: str) -> str:
    return f"""
[teachers.openai]
kind = "openai"
base_url = "{openai_url}"
api_key_env = "{KEY_ENV}"
daily_max_cost_usd = 25.0

[teachers.openai.prices."gpt-4o-mini"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[teachers.local]
kind = "openai-compatible"
base_url = "{local_url}"

[teachers.local.limits]
requests_per_min = 6000
max_in_flight = 8

[teachers.local.capabilities]
max_top_logprobs = 5

[teachers.local.prices."llama-3-8b"]
input_per_mtok = 0.5
output_per_mtok = 0.5
"""


@pytest.fixture(scope="module")
def local_api() -> Iterator[FakeTeacherAPI]:
    """A second fake: a local vLLM, which takes no key."""
    api = FakeTeacherAPI().start_in_thread()
    try:
        yield api
    finally:
        api.stop_thread()


@pytest.fixture(scope="module")
def teachers_client(
    backing: Backing,
    teacher_api: FakeTeacherAPI,
    local_api: FakeTeacherAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Client]:
    data = tmp_path_factory.mktemp("teachers")
    path = data / "teachers.toml"
    path.write_text(teachers_toml(teacher_api.openai_base_url, local_api.openai_base_url))
    os.environ[KEY_ENV] = TEACHER_KEY
    try:
        # A database and Redis database of its own: another collector's worker
        # knows no teacher 'local' and must never take these runs.
        with backing.isolated() as own:
            settings = collector_settings(own, data, TEACHERS_FILE=str(path), TEACHER_TIMEOUT_S=5)
            with (
                CollectorEnvironment(settings) as running,
                connect(running.address, token=running.token) as client,
            ):
                yield client
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture
def template(teachers_client: Client) -> PromptTemplate:
    return teachers_client.create_template(
        unique("teach"), user_template="Explain {{ topic }}.", variables=["topic"]
    )


def test_list_teachers_shows_limits_prices_and_never_a_key(teachers_client: Client) -> None:
    teachers = {t.name: t for t in teachers_client.list_teachers()}
    assert {"openai", "anthropic", "mock", "local"} <= set(teachers)
    local, openai = teachers["local"], teachers["openai"]
    assert local.kind is TeacherKind.OPENAI_COMPATIBLE
    assert local.limits.requests_per_min == 6000 and local.limits.max_in_flight == 8
    assert local.limits.tokens_per_min is None  # learned
    assert local.capabilities.max_top_logprobs == 5
    assert [(p.model, p.input_per_mtok) for p in local.prices] == [("llama-3-8b", 0.5)]
    assert openai.api_key_env == KEY_ENV and openai.daily_max_cost_usd == 25.0
    mini = next(p for p in openai.prices if p.model == "gpt-4o-mini")
    assert (mini.input_per_mtok, mini.output_per_mtok) == (1.0, 2.0)  # the file wins
    assert TEACHER_KEY not in repr(teachers)


def test_unknown_teacher_and_too_many_top_logprobs_are_invalid(
    teachers_client: Client, template: PromptTemplate
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        teachers_client.create_batch(unique("b"), template.id, "gemini", "m")
    (violation,) = caught.value.field_violations
    assert violation.field == "provider"
    assert "local" in violation.description and "openai" in violation.description

    with pytest.raises(InvalidArgumentError) as caught:
        teachers_client.create_batch(
            unique("b"),
            template.id,
            "local",
            "llama-3-8b",
            params=GenerationParams(top_logprobs=10),
        )
    (violation,) = caught.value.field_violations
    assert violation.field == "params.top_logprobs"
    assert "0-5" in violation.description
    # Within what the teacher accepts: fine.
    teachers_client.create_batch(
        unique("b"), template.id, "local", "llama-3-8b", params=GenerationParams(top_logprobs=5)
    )


def test_a_local_server_and_openai_in_one_deployment(
    teachers_client: Client,
    template: PromptTemplate,
    teacher_api: FakeTeacherAPI,
    local_api: FakeTeacherAPI,
) -> None:
    teacher_api.reset()
    local_api.reset()
    params = GenerationParams(max_tokens=16, top_logprobs=3)
    batches = [
        teachers_client.create_batch(
            unique("b"), template.id, "local", "llama-3-8b", params=params
        ),
        teachers_client.create_batch(
            unique("b"), template.id, "openai", "gpt-4o-mini", params=params
        ),
    ]
    for batch in batches:
        teachers_client.create_runs(batch.id, [{"topic": f"t{i}"} for i in range(12)])
    for batch in batches:
        for _ in teachers_client.watch_batch(batch.id):
            pass
    done = [teachers_client.get_batch(b.id) for b in batches]
    assert [b.status for b in done] == [BatchStatus.COMPLETED] * 2
    assert [b.counts.completed for b in done] == [12, 12]
    assert local_api.served == 12 and teacher_api.served == 12
    local, openai = done
    expected = (local.usage.input_tokens + local.usage.output_tokens) * 0.5 / 1e6
    assert local.usage.cost_usd == pytest.approx(expected)
    expected = (openai.usage.input_tokens * 1.0 + openai.usage.output_tokens * 2.0) / 1e6
    assert openai.usage.cost_usd == pytest.approx(expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[teachers.x\nkind=", "not valid TOML"),
        ('[teachers.x]\nkind = "gemini"', "teachers.x.kind"),
        (
            '[teachers.x]\nkind = "openai-compatible"\nbase_url = "http://h/v1"\n'
            'api_key_env = "NEXC_TEST_UNSET_KEY"',
            "teachers.x.api_key_env names NEXC_TEST_UNSET_KEY, which is not set",
        ),
    ],
)
def test_a_bad_teachers_file_stops_start_up_in_one_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "teachers.toml"
    path.write_text(content)
    result = nex_collector("serve", env={"TEACHERS_FILE": str(path)}, data_dir=tmp_path)
    refused(message, result)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
