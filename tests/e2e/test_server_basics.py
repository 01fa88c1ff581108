"""What an operator and a grpcurl user see: auth, health, reflection, UNIMPLEMENTED."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nex.collector.client import UnauthenticatedError, connect
from nex.collector.server.testing import CollectorEnvironment

SERVICES = {
    "nex.collector.v1.ContextRefService",
    "nex.collector.v1.TemplateService",
    "nex.collector.v1.TeacherService",
    "nex.collector.v1.DatasetService",
    "nex.collector.v1.EvidenceService",
    "grpc.health.v1.Health",
}


def test_calls_without_or_with_a_wrong_token_are_unauthenticated(
    collector: CollectorEnvironment,
) -> None:
    for token in (None, "wrong"):
        with connect(collector.address, token=token) as c, pytest.raises(UnauthenticatedError):
            c.get_context_ref("ctx_x")


def test_health_answers_without_a_token(collector: CollectorEnvironment) -> None:
    with grpc.insecure_channel(collector.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "nex.collector.v1.TeacherService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.skip("grpcurl is not installed (make install brings it)")
    return found


def test_grpcurl_lists_services_by_reflection(collector: CollectorEnvironment) -> None:
    out = subprocess.run(
        [_grpcurl(), "-plaintext", collector.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert set(out) >= SERVICES


def test_grpcurl_creates_and_reads_a_context_ref(collector: CollectorEnvironment) -> None:
    auth = ["-H", f"authorization: Bearer {collector.token}"]
    created = subprocess.run(
        [
            _grpcurl(),
            "-plaintext",
            *auth,
            "-d",
            '{"nex_context_id": "grpcurl-ctx", "nex_context_version": "1"}',
            collector.address,
            "nex.collector.v1.ContextRefService/CreateContextRef",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    ref = json.loads(created)["context_ref"]  # grpcurl prints the proto field names
    assert ref["nex_context_id"] == "grpcurl-ctx"
    fetched = subprocess.run(
        [
            _grpcurl(),
            "-plaintext",
            *auth,
            "-d",
            json.dumps({"id": ref["id"]}),
            collector.address,
            "nex.collector.v1.ContextRefService/GetContextRef",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert json.loads(fetched)["context_ref"] == ref
