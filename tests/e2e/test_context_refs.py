"""ContextRefService through the shipped client against a real server."""

from __future__ import annotations

from typing import Any

import pytest

from nex.collector.client import Client, InvalidArgumentError, NotFoundError
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique


def test_create_get_and_dedup(client: Client) -> None:
    nex_id = unique("ctx")
    ref = client.create_context_ref(nex_id, "7", labels={"team": "search"})
    assert ref.id.startswith("ctx_")
    assert (ref.nex_context_id, ref.nex_context_version, ref.labels) == (
        nex_id,
        "7",
        {"team": "search"},
    )
    assert ref.create_time is not None

    assert client.get_context_ref(ref.id) == ref
    # The same NEX context version again is the same reference.
    assert client.create_context_ref(nex_id, "7").id == ref.id
    assert client.create_context_ref(nex_id, "8").id != ref.id


def test_request_id_makes_create_idempotent(client: Client) -> None:
    request_id = unique("req")
    first = client.create_context_ref(unique("ctx"), "1", request_id=request_id)
    other = unique("other")
    again = client.create_context_ref(other, "2", request_id=request_id)
    assert again == first
    assert list(client.list_context_refs(nex_context_id=other)) == []


def test_list_follows_pages_in_order(client: Client) -> None:
    nex_id = unique("paged")
    created = [client.create_context_ref(nex_id, str(v)).id for v in range(7)]
    assert [r.id for r in client.list_context_refs(nex_context_id=nex_id, page_size=3)] == created


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nex_context_id": "", "nex_context_version": "1"}, "nex_context_id"),
        ({"nex_context_id": "x", "nex_context_version": ""}, "nex_context_version"),
        (
            {"nex_context_id": "x", "nex_context_version": "1", "labels": {"Bad Key": "v"}},
            "labels['Bad Key']",
        ),
        (
            {
                "nex_context_id": "x",
                "nex_context_version": "1",
                "labels": {f"k{i}": "v" for i in range(65)},
            },
            "labels",
        ),
        (
            {"nex_context_id": "x", "nex_context_version": "1", "labels": {"k": "v" * 300}},
            "labels['k']",
        ),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    client: Client, kwargs: dict[str, Any], field: str
) -> None:
    before = len(list(client.list_context_refs(nex_context_id="x")))
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_context_ref(**kwargs)
    assert field in [v.field for v in caught.value.field_violations]
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert "Traceback" not in caught.value.message
    assert len(list(client.list_context_refs(nex_context_id="x"))) == before


def test_unknown_id_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.get_context_ref("ctx_doesnotexist")
    assert caught.value.reason == "CONTEXT_REF_NOT_FOUND"


def test_bad_page_token_and_negative_page_size(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        list(client.list_context_refs(page_size=-1))
    assert [v.field for v in caught.value.field_violations] == ["page_size"]


def test_page_token_is_bound_to_its_filter(client: Client, collector: CollectorEnvironment) -> None:
    import grpc

    from nex.collector.v1 import context_ref_service_pb2 as pb
    from nex.collector.v1 import context_ref_service_pb2_grpc as pb_grpc

    nex_id = unique("bound")
    for v in range(3):
        client.create_context_ref(nex_id, str(v))
    with grpc.insecure_channel(collector.address) as channel:
        stub = pb_grpc.ContextRefServiceStub(channel)
        md = (("authorization", f"Bearer {collector.token}"),)
        page = stub.ListContextRefs(
            pb.ListContextRefsRequest(nex_context_id=nex_id, page_size=2), metadata=md
        )
        assert page.next_page_token
        for token, other in ((page.next_page_token, "other"), ("garbage!", nex_id)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListContextRefs(
                    pb.ListContextRefsRequest(nex_context_id=other, page_token=token), metadata=md
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
