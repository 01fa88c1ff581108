"""What an operator's Prometheus scrapes from METRICS_ADDR while the collector
serves calls, runs a teacher and builds a dataset."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nex.collector.client import (
    BatchStatus,
    Client,
    GenerationParams,
    NotFoundError,
    RunStatus,
    connect,
)
from nex.collector.server.config import ConfigError, load_settings
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.processes import free_port

Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(url: str) -> dict[Sample, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(
    before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def settled(
    url: str, before: dict[Sample, float], *expected: tuple[str, dict[str, str], float]
) -> dict[Sample, float]:
    """A scrape in which each (name, labels, delta) has been reached, or the last
    one after 10 s: workers count a run or a build just after committing it, so
    a client can see the result a moment before the counter moves."""
    deadline = time.monotonic() + 10
    while True:
        after = scrape(url)
        if all(delta(before, after, n, **labels) >= d for n, labels, d in expected):
            return after
        if time.monotonic() > deadline:
            return after
        time.sleep(0.05)


@pytest.fixture(scope="module")
def metered(
    backing: Backing, teacher_api: FakeTeacherAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Client, str]]:
    port = free_port()
    with backing.isolated() as own:
        settings = collector_settings(
            own,
            Path(tmp_path_factory.mktemp("metered")),
            METRICS_ADDR=f"127.0.0.1:{port}",
            **teacher_settings(teacher_api),
        )
        with (
            CollectorEnvironment(settings) as running,
            connect(running.address, running.token) as c,
        ):
            yield c, f"http://127.0.0.1:{port}/metrics"


def test_calls_teacher_runs_and_builds_are_counted(
    metered: tuple[Client, str], fresh_teacher_api: FakeTeacherAPI
) -> None:
    client, url = metered
    before = scrape(url)

    template = client.create_template(unique("m"), user_template="Say {{ x }}.", variables=["x"])
    with pytest.raises(NotFoundError):
        client.get_batch("bat_missing")
    batch = client.create_batch(
        unique("b"), template.id, "openai", "gpt-4o-mini", params=GenerationParams(top_logprobs=2)
    )
    fresh_teacher_api.fail_next(400)  # the first run fails at once, the others complete
    first = client.create_run(batch.id, {"x": "0"})
    assert list(client.watch_run(first.id))[-1].status == RunStatus.FAILED
    client.create_runs(batch.id, [{"x": str(i)} for i in range(1, 4)])
    assert [e for e in client.watch_batch(batch.id) if e.status == RunStatus.COMPLETED]
    dataset = client.wait_dataset(client.build_dataset(unique("d"), "v1", [batch.id]).id)
    assert dataset.counts is not None and dataset.counts.total == 3

    after = settled(
        url,
        before,
        ("nex_collector_dataset_builds_total", {"status": "ready"}, 1),
        ("nex_collector_runs_finished_total", {"status": "completed"}, 3),
        ("nex_collector_runs_finished_total", {"status": "failed"}, 1),
    )
    rpc = "nex_collector_rpcs_total"
    assert (
        delta(
            before, after, rpc, method="/nex.collector.v1.TemplateService/CreateTemplate", code="OK"
        )
        == 1
    )
    assert (
        delta(
            before, after, rpc, method="/nex.collector.v1.TeacherService/GetBatch", code="NOT_FOUND"
        )
        == 1
    )
    assert (
        delta(before, after, rpc, method="/nex.collector.v1.TeacherService/WatchRuns", code="OK")
        == 2
    )
    assert (
        delta(
            before,
            after,
            "nex_collector_rpc_duration_seconds_count",
            method="/nex.collector.v1.TemplateService/CreateTemplate",
        )
        == 1
    )
    calls = "nex_collector_teacher_calls_total"
    assert delta(before, after, calls, provider="openai", outcome="ok") == 3
    assert delta(before, after, calls, provider="openai", outcome="PROVIDER_BAD_REQUEST") == 1
    assert delta(before, after, "nex_collector_runs_finished_total", status="completed") == 3
    assert delta(before, after, "nex_collector_runs_finished_total", status="failed") == 1
    tokens = delta(
        before, after, "nex_collector_teacher_tokens_total", provider="openai", kind="output"
    )
    assert tokens == client.get_batch(batch.id).usage.output_tokens > 0
    assert delta(before, after, "nex_collector_dataset_builds_total", status="ready") == 1
    assert delta(before, after, "nex_collector_dataset_runs_read_total") == 3


def _backlog(url: str) -> dict[str, float]:
    now = scrape(url)
    return {
        "queued": now.get(("nex_collector_runs_active", frozenset({("status", "queued")})), -1),
        "running": now.get(("nex_collector_runs_active", frozenset({("status", "running")})), -1),
        "building": now.get(("nex_collector_datasets_building", frozenset()), -1),
        "pending": now.get(("nex_collector_evidence_pending", frozenset()), -1),
    }


def _until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_backlog_is_read_from_the_database(
    metered: tuple[Client, str], fresh_teacher_api: FakeTeacherAPI
) -> None:
    client, url = metered
    fresh_teacher_api.latency_s = 2.0  # long enough for a refresh (1 s here) to see the runs
    template = client.create_template(unique("m"), user_template="Say {{ x }}.", variables=["x"])
    batch = client.create_batch(unique("b"), template.id, "openai", "gpt-4o-mini")
    client.create_runs(batch.id, [{"x": str(i)} for i in range(20)])
    _until(
        lambda: (b := _backlog(url))["queued"] + b["running"] == 20,
        f"the 20 runs never showed as queued or running: {_backlog(url)}",
    )
    for _ in client.watch_batch(batch.id):
        pass
    _until(
        lambda: _backlog(url) == {"queued": 0, "running": 0, "building": 0, "pending": 0},
        f"the backlog did not drain: {_backlog(url)}",
    )


def test_a_paused_batch_shows_its_budget_left(
    metered: tuple[Client, str], fresh_teacher_api: FakeTeacherAPI
) -> None:
    client, url = metered
    before = scrape(url)
    template = client.create_template(unique("m"), user_template="Say {{ x }}.", variables=["x"])
    params = GenerationParams(max_tokens=8)
    rows = [{"x": str(i)} for i in range(8)]
    worst = client.estimate_batch(template.id, "openai", "gpt-4o-mini", rows, params=params)
    batch = client.create_batch(
        unique("b"),
        template.id,
        "openai",
        "gpt-4o-mini",
        params=params,
        max_cost_usd=worst.worst_case_cost_usd / 3,
    )
    client.create_runs(batch.id, rows)
    left = ("nex_collector_budget_left_usd", frozenset({("batch_id", batch.id)}))
    _until(lambda: left in scrape(url), "no budget gauge for the capped batch")
    _until(
        lambda: delta(before, scrape(url), "nex_collector_batches_paused_total",
                      reason="BUDGET_EXHAUSTED") == 1,
        "the pause was not counted",
    )  # fmt: skip
    _until(lambda: client.get_batch(batch.id).status == BatchStatus.PAUSED, "never paused")
    remaining = client.get_batch(batch.id).budget.remaining_usd
    assert remaining is not None
    _until(  # refreshed every RECONCILE_INTERVAL_S
        lambda: scrape(url)[left] == pytest.approx(remaining), "the gauge missed the spend"
    )
    client.cancel_batch(batch.id)
    _until(lambda: left not in scrape(url), "the gauge outlived the batch's active runs")


def test_a_bad_metrics_address_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="METRICS_ADDR"):
        load_settings(METRICS_ADDR="localhost")
