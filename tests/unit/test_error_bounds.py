"""A status never grows with the input it complains about, and the edge check
walks every field of a request message."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.message import Message

from nex.collector.server.api.edge import check_request
from nex.collector.server.api.errors import rich_status, status_for
from nex.collector.server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    clip,
    key_path,
    quote,
)
from nex.collector.server.domain.limits import (
    MAX_ERROR_MESSAGE_BYTES,
    MAX_QUOTE,
    MAX_STATUS_DETAILS_BYTES,
)
from nex.collector.v1 import dataset_pb2, dataset_service_pb2, teacher_service_pb2


def test_clip_and_quote_bound_what_an_error_repeats() -> None:
    assert clip("short") == "short"
    assert len(clip("x" * 10_000)) == MAX_QUOTE and clip("x" * 10_000).endswith("…")
    assert quote("a\x00") == "'a\\x00'"
    assert len(key_path("labels", "k" * 10_000)) < MAX_QUOTE + 20


@pytest.mark.parametrize("char", ["x", "é", "😀", "\x01"])
def test_a_status_stays_small_whatever_it_quotes(char: str) -> None:
    huge = char * 20_000
    error = InvalidArgument([FieldViolation(huge, huge) for _ in range(100)])
    _code, status = status_for(error)
    assert status.ByteSize() <= MAX_STATUS_DETAILS_BYTES
    assert len(status.message.encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert status.details, "the BadRequest survives, shortened"
    _code, status = status_for(NotFound("batch", huge))
    assert status.ByteSize() <= MAX_STATUS_DETAILS_BYTES
    status = rich_status(grpc.StatusCode.FAILED_PRECONDITION, huge, huge, {huge: huge})
    assert status.ByteSize() <= MAX_STATUS_DETAILS_BYTES


def _fields(request: Message) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        check_request(request)
    return [v.field for v in caught.value.violations]


def test_the_edge_check_walks_nested_lists_and_maps() -> None:
    request = teacher_service_pb2.BatchCreateRunsRequest(
        batch_id="bat_1",
        runs=[
            teacher_service_pb2.RunInput(variables={"x": "ok"}),
            teacher_service_pb2.RunInput(variables={"x": "a\x00"}, request_id="r\x00"),
        ],
    )
    assert _fields(request) == ["runs[1].variables['x']", "runs[1].request_id"]


def test_the_edge_check_refuses_non_finite_numbers_anywhere() -> None:
    request = dataset_service_pb2.BuildDatasetRequest(
        filters=[
            dataset_pb2.Filter(entropy=dataset_pb2.EntropyFilter(min=math.nan)),
            dataset_pb2.Filter(score=dataset_pb2.ScoreFilter(name="s", max=math.inf)),
        ]
    )
    assert _fields(request) == ["filters[0].entropy.min", "filters[1].score.max"]


def test_the_edge_check_reports_a_bounded_number_of_violations() -> None:
    request = teacher_service_pb2.BatchCreateRunsRequest(
        runs=[teacher_service_pb2.RunInput(request_id="\x00") for _ in range(1000)]
    )
    assert len(_fields(request)) == 20


def test_a_clean_request_passes() -> None:
    check_request(teacher_service_pb2.SetRunScoresRequest(run_id="run_1", scores={"judge": 0.5}))
