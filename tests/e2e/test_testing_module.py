"""nex.collector.server.testing as a NEX team uses it: the README's example runs
as written, and a collector with no settings starts on embedded servers of its
own and leaves nothing behind."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from nex.collector.server.testing import CollectorEnvironment, CollectorStartError, make_settings
from tests.support.backing import Backing
from tests.support.cli import invoke, no_traceback
from tests.support.health import check_health
from tests.support.processes import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The first python block of the README's "Testing your integration" section."""
    section = README.read_text().split("## Testing your integration", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert found, "README's Testing your integration section has no python block"
    return found.group(1)


def test_the_readme_example_runs(
    own_backing: Backing, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the "given DATABASE_URL / REDIS_URL" way, on a database of this test's own
    monkeypatch.setenv("DATABASE_URL", own_backing.database_url)
    monkeypatch.setenv("REDIS_URL", own_backing.redis_url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    tests = {k: v for k, v in namespace.items() if k.startswith("test_") and callable(v)}
    assert sorted(tests) == ["test_async_client", "test_distils_a_dataset"]
    for test in tests.values():
        assert callable(test)
        test()


def test_with_no_settings_it_runs_embedded_in_a_folder_it_removes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with CollectorEnvironment() as env:
        assert env.settings.embedded
        data_dir = env.settings.data_dir
        assert data_dir.is_dir()
        assert check_health(env.address)
        with env.client() as client:
            assert [t.name for t in client.list_teachers()]
    assert not check_health(env.address, timeout=1.0)
    assert not data_dir.exists()


def test_a_collector_that_cannot_start_says_why(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none", redis_url=None
    )
    with pytest.raises(CollectorStartError, match="did not start"):
        CollectorEnvironment(settings, start_timeout_s=60).start()


def test_the_demo_starts_its_own_collector_when_none_answers(
    own_backing: Backing, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", own_backing.database_url)
    monkeypatch.setenv("REDIS_URL", own_backing.redis_url)
    monkeypatch.setenv("NEX_COLLECTOR_TOKENS", "demo-token")
    nobody = f"127.0.0.1:{free_port()}"
    result = invoke(None, "demo", "--runs", "4", "--addr", nobody, "--data-dir", str(tmp_path))
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert f"No collector answers at {nobody}" in result.output
    assert "collector running on 127.0.0.1:" in result.output
    assert "4/4 completed" in result.output
    assert "demo complete" in result.output
    assert not any(t.name == "demo-collector" for t in threading.enumerate())
