"""Configuration comes from the environment, read in one place, and a setting
that cannot work stops the process with a message that says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nex.collector.server.cli.main import app
from nex.collector.server.config import ConfigError, IntegrationMode, load_settings


def test_defaults_are_standalone_and_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "MODE_INTEGRATION",
        "NEX_COLLECTOR_TOKENS",
        "NEX_COLLECTOR_ADDR",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.mode is IntegrationMode.STANDALONE
    assert (
        settings.embedded and settings.addr == "127.0.0.1:50051" and settings.tokens == frozenset()
    )


def test_tokens_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEX_COLLECTOR_TOKENS", "a, b,,c ")
    assert load_settings().tokens == {"a", "b", "c"}


def test_integrated_mode_needs_a_nex_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODE_INTEGRATION", "integrated")
    monkeypatch.delenv("NEX_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="NEX_BASE_URL"):
        load_settings()
    monkeypatch.setenv("NEX_BASE_URL", "http://nex.test")
    assert load_settings().mode is IntegrationMode.INTEGRATED


def test_the_server_refuses_to_start_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODE_INTEGRATION", "integrated")
    monkeypatch.delenv("NEX_BASE_URL", raising=False)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "NEX_BASE_URL" in result.output and "Traceback" not in result.output


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODE_INTEGRATION", "sometimes")
    with pytest.raises(ConfigError, match="MODE_INTEGRATION"):
        load_settings()


@pytest.mark.parametrize(
    ("addr", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.9.9.9:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/tmp/collector.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("collector.internal:50051", False),
    ],
)
def test_only_a_loopback_address_serves_without_tokens(
    monkeypatch: pytest.MonkeyPatch, addr: str, local: bool
) -> None:
    monkeypatch.delenv("NEX_COLLECTOR_ALLOW_ANONYMOUS", raising=False)
    monkeypatch.setenv("NEX_COLLECTOR_ADDR", addr)
    monkeypatch.setenv("NEX_COLLECTOR_TOKENS", "")
    assert (load_settings().anonymous_exposure is None) is local
    monkeypatch.setenv("NEX_COLLECTOR_TOKENS", "t1")
    assert load_settings().anonymous_exposure is None
    monkeypatch.setenv("NEX_COLLECTOR_TOKENS", "")
    monkeypatch.setenv("NEX_COLLECTOR_ALLOW_ANONYMOUS", "true")
    assert load_settings().anonymous_exposure is None


def test_the_request_size_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_REQUEST_BYTES", raising=False)
    assert load_settings().max_request_bytes == 4 * 1024 * 1024
    monkeypatch.setenv("MAX_REQUEST_BYTES", "1048576")
    assert load_settings().max_request_bytes == 1048576
    monkeypatch.setenv("MAX_REQUEST_BYTES", "10")
    with pytest.raises(ConfigError, match="MAX_REQUEST_BYTES"):
        load_settings()


def test_datasets_live_under_data_dir_unless_datasets_uri_says_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nex.collector.server.bootstrap import open_dataset_store

    monkeypatch.delenv("DATASETS_URI", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    store = open_dataset_store(load_settings())
    assert store.is_local and store.uri == (tmp_path / "datasets").resolve().as_uri()
    monkeypatch.setenv("DATASETS_URI", "s3://team-bucket/nex/datasets")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    store = open_dataset_store(load_settings())
    assert store.uri == "s3://team-bucket/nex/datasets"
    assert store.location("a", "v1").uri == "s3://team-bucket/nex/datasets/a/v1"
    monkeypatch.setenv("DATASETS_URI", "gs://bucket")
    with pytest.raises(ConfigError, match="DATASETS_URI"):
        load_settings()
