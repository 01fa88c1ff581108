"""A watch survives a server restart: the shipped client reconnects with the last
revision it saw and misses nothing, sees nothing twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from nex.collector.client import GenerationParams, RunEvent, RunStatus, WatchRetry, connect
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.processes import free_port


def test_watch_batch_resumes_across_a_server_restart(
    backing: Backing, fresh_teacher_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    fresh_teacher_api.latency_s = 0.05
    with backing.isolated() as own:
        settings = collector_settings(
            own,
            tmp_path,
            NEX_COLLECTOR_ADDR=f"127.0.0.1:{free_port()}",
            WORKER_MAX_JOBS=4,
            **teacher_settings(fresh_teacher_api),
        )
        seen: list[RunEvent] = []
        errors: list[BaseException] = []
        first = CollectorEnvironment(settings)
        running = first.__enter__()
        retry = WatchRetry(initial_backoff=0.05, max_backoff=0.5, give_up_after=60)
        client = connect(running.address, token=running.token, watch_retry=retry)
        try:
            template = client.create_template(unique("w"), user_template="{{ x }}", variables=["x"])
            batch = client.create_batch(
                unique("w"),
                template.id,
                "openai",
                "gpt-4o-mini",
                params=GenerationParams(max_tokens=4),
            )
            client.create_runs(batch.id, [{"x": str(i)} for i in range(60)])

            def watch() -> None:
                try:
                    seen.extend(client.watch_batch(batch.id))
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            deadline = time.monotonic() + 30
            while not any(e.status == RunStatus.COMPLETED for e in seen):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            first.__exit__(None, None, None)  # the server goes away mid-watch
            with CollectorEnvironment(settings):  # and comes back on the same address
                watcher.join(60)
                assert not watcher.is_alive() and not errors
        finally:
            client.close()
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions))  # nothing twice, in order
    completed = {e.run_id for e in seen if e.status == RunStatus.COMPLETED}
    assert len(completed) == 60  # nothing missed
