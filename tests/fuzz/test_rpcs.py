"""Property: whatever a caller sends to any RPC of any service, the answer is a
precise status (never UNKNOWN or INTERNAL, never an error that overflows the
metadata limit), a refused create leaves nothing behind, and the server stays
healthy. `make test` runs a bounded number of examples; `make fuzz` many more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, note
from hypothesis import strategies as st

from nex.collector.v1 import (
    context_ref_service_pb2,
    dataset_service_pb2,
    evidence_service_pb2,
    teacher_service_pb2,
    template_service_pb2,
)
from tests.fuzz.conftest import Fuzzed
from tests.fuzz.strategies import request
from tests.support.db import fetch_all


@dataclass(frozen=True)
class Rpc:
    path: str
    request: type[Message]
    response: type[Message]
    streaming: bool

    def __str__(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _rpcs() -> list[Rpc]:
    out = []
    for module in (
        context_ref_service_pb2,
        template_service_pb2,
        teacher_service_pb2,
        dataset_service_pb2,
        evidence_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        getattr(module, method.input_type.name),
                        getattr(module, method.output_type.name),
                        method.server_streaming,
                    )
                )
    return out


RPCS = _rpcs()

# What a create writes: a refused one must leave the count as it was. Evidence
# links made by the server itself (request ids "auto:…") are not counted: a
# worker adds them when a linked batch or dataset finishes.
WRITES = {
    "CreateContextRef": "SELECT count(*) AS n FROM context_refs",
    "CreateTemplate": "SELECT count(*) AS n FROM templates",
    "CreateBatch": "SELECT count(*) AS n FROM batches",
    "CreateRun": "SELECT count(*) AS n FROM runs",
    "BatchCreateRuns": "SELECT count(*) AS n FROM runs",
    "BuildDataset": "SELECT count(*) AS n FROM datasets",
    "CreateEvidenceLink": (
        "SELECT count(*) AS n FROM evidence_links "
        "WHERE request_id IS NULL OR request_id NOT LIKE 'auto:%'"
    ),
}
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
BIG_REQUEST = 1 << 20  # past this, RESOURCE_EXHAUSTED may be the request size limit


def test_every_rpc_is_fuzzed() -> None:
    names = {str(r) for r in RPCS}
    assert len(RPCS) == 22 and {"WatchRuns", "BatchCreateRuns", "BuildDataset"} <= names


def _count(fuzzed: Fuzzed, rpc: Rpc) -> int | None:
    query = WRITES.get(str(rpc))
    return None if query is None else int(fetch_all(fuzzed.collector, query)[0]["n"])


def _call(fuzzed: Fuzzed, rpc: Rpc, message: Message) -> grpc.StatusCode:
    kwargs: dict[str, Any] = {"metadata": fuzzed.metadata, "timeout": 20}
    try:
        if rpc.streaming:
            call = fuzzed.channel.unary_stream(
                rpc.path,
                request_serializer=rpc.request.SerializeToString,
                response_deserializer=rpc.response.FromString,
            )
            stream: Any = call(message, **{**kwargs, "timeout": 3})
            for i, _ in enumerate(stream):
                if i >= 5:
                    stream.cancel()
                    return grpc.StatusCode.OK
        else:
            fuzzed.channel.unary_unary(
                rpc.path,
                request_serializer=rpc.request.SerializeToString,
                response_deserializer=rpc.response.FromString,
            )(message, **kwargs)
    except grpc.RpcError as exc:
        error: Any = exc
        code: grpc.StatusCode = error.code()
        note(f"{code.name}: {(error.details() or '')[:300]!r}")
        _check_details(error)
        return code
    return grpc.StatusCode.OK


def _check_details(error: Any) -> None:
    """A refusal carries a google.rpc.Status that parses."""
    trailers: tuple[tuple[str, Any], ...] = tuple(error.trailing_metadata() or ())
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            status_pb2.Status.FromString(value)


def _healthy(fuzzed: Fuzzed) -> None:
    reply = health_pb2_grpc.HealthStub(fuzzed.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("rpc", RPCS, ids=str)
@given(data=st.data())
def test_any_request_gets_a_precise_status(fuzzed: Fuzzed, rpc: Rpc, data: st.DataObject) -> None:
    message = data.draw(request(rpc.request, fuzzed.pools), label="request")
    size = message.ByteSize()
    note(f"{rpc} request of {size} bytes")
    before = _count(fuzzed, rpc)
    code = _call(fuzzed, rpc, message)
    assert code not in NEVER, f"{rpc} answered {code.name}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert size >= BIG_REQUEST, f"{rpc}: RESOURCE_EXHAUSTED for a {size}-byte request"
    if code != grpc.StatusCode.OK and before is not None:
        assert _count(fuzzed, rpc) == before, f"a refused {rpc} left rows behind"
    _healthy(fuzzed)


@given(
    runs=st.lists(
        st.sampled_from(["ok", "a\x00", "é" * 200_000, "\u2028", "../x"]), min_size=1, max_size=6
    )
)
def test_a_refused_batch_of_runs_creates_none(fuzzed: Fuzzed, runs: list[str]) -> None:
    """All or nothing: one bad run among good ones, and the batch's count is unchanged."""
    rpc = next(r for r in RPCS if str(r) == "BatchCreateRuns")
    message = teacher_service_pb2.BatchCreateRunsRequest(
        batch_id=fuzzed.batch_id,
        runs=[teacher_service_pb2.RunInput(variables={"x": value}) for value in runs],
    )
    before = _count(fuzzed, rpc)
    code = _call(fuzzed, rpc, message)
    bad = any(v == "a\x00" or len(v) > 100_000 for v in runs)
    assert code == (grpc.StatusCode.INVALID_ARGUMENT if bad else grpc.StatusCode.OK)
    assert _count(fuzzed, rpc) == (before if bad else (before or 0) + len(runs))
