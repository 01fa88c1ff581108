"""A collector serving TLS (NEX_COLLECTOR_TLS_CERT / _KEY): the shipped client
and the CLI reach it with the CA they trust, plaintext clients do not."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from typer.testing import CliRunner

from nex.collector.client import UnavailableError, connect
from nex.collector.server.cli.main import app
from nex.collector.server.config import ConfigError, load_settings
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique
from tests.support.backing import Backing
from tests.support.collector import TOKEN, collector_settings


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(paths.cert), append=True)
    server.private_key_pem.write_to_path(str(paths.key))
    return paths


@pytest.fixture(scope="module")
def tls_collector(
    backing: Backing, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorEnvironment]:
    settings = collector_settings(
        backing,
        Path(tmp_path_factory.mktemp("tls")),
        NEX_COLLECTOR_TLS_CERT=pki.cert,
        NEX_COLLECTOR_TLS_KEY=pki.key,
    )
    with CollectorEnvironment(settings, work=False) as running:
        yield running


def test_the_client_talks_tls_with_the_trusted_ca(
    tls_collector: CollectorEnvironment, pki: Pki
) -> None:
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with connect(tls_collector.address, tls_collector.token, tls=trusted) as client:
        name = unique("tls")
        created = client.create_template(name, user_template="Hi {{ x }}", variables=["x"])
        assert client.get_template(created.id).name == name


def test_plaintext_and_untrusted_clients_are_turned_away(
    tls_collector: CollectorEnvironment,
) -> None:
    with pytest.raises(UnavailableError):
        connect(tls_collector.address, tls_collector.token, timeout=2)
    with pytest.raises(UnavailableError):  # system roots do not know our test CA
        connect(tls_collector.address, tls_collector.token, timeout=2, tls=True)


def test_cli_commands_trust_nex_collector_tls_ca(
    tls_collector: CollectorEnvironment, pki: Pki
) -> None:
    args = ["template", "create", "--name", unique("cli-tls"), "--user", "Hi {{ x }}", "--var", "x"]
    args += ["--addr", tls_collector.address, "--token", TOKEN]
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(
            CliRunner().invoke, app, args, env={"NEX_COLLECTOR_TLS_CA": str(pki.ca)}
        ).result(timeout=60)
    assert result.exit_code == 0, result.output
    assert "tpl_" in result.output


def test_half_a_tls_configuration_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="NEX_COLLECTOR_TLS_CERT and NEX_COLLECTOR_TLS_KEY"):
        load_settings(NEX_COLLECTOR_TLS_CERT=pki.cert)


def test_a_key_that_is_not_pem_stops_the_start(backing: Backing, pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "key.txt"
    garbage.write_text("not a key")
    settings = collector_settings(
        backing, tmp_path, NEX_COLLECTOR_TLS_CERT=pki.cert, NEX_COLLECTOR_TLS_KEY=garbage
    )
    with (
        pytest.raises(RuntimeError, match="must be PEM files"),
        CollectorEnvironment(settings, work=False),
    ):
        pass


def test_a_key_that_does_not_match_stops_the_start(
    backing: Backing, pki: Pki, tmp_path: Path
) -> None:
    other = trustme.CA().issue_cert("127.0.0.1")
    wrong_key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(wrong_key))
    settings = collector_settings(
        backing, tmp_path, NEX_COLLECTOR_TLS_CERT=pki.cert, NEX_COLLECTOR_TLS_KEY=wrong_key
    )
    with (
        pytest.raises(RuntimeError, match="do not form a valid pair"),
        CollectorEnvironment(settings, work=False),
    ):
        pass
