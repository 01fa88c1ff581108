"""Property: bodies that are not a valid message (random bytes, strings with
invalid UTF-8) are refused with a precise status, and the server stays healthy.

Decoding happens after authentication and before any servicer runs, in the
server's one interceptor."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from tests.fuzz.conftest import Fuzzed
from tests.fuzz.test_rpcs import NEVER, RPCS, Rpc, _healthy


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2), e.g. a string."""
    assert number < 16 and len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


ONE_PER_SERVICE = {
    "CreateContextRef",
    "CreateTemplate",
    "BatchCreateRuns",
    "BuildDataset",
    "CreateEvidenceLink",
}
bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _field,
        st.integers(1, 8),
        st.sampled_from([b"\xff", b"a\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]),
    ),
)


@pytest.mark.parametrize("rpc", [r for r in RPCS if str(r) in ONE_PER_SERVICE], ids=str)
@given(body=bodies)
def test_undecodable_bodies_are_invalid_argument(fuzzed: Fuzzed, rpc: Rpc, body: bytes) -> None:
    call = fuzzed.channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
    try:
        call(body, metadata=fuzzed.metadata, timeout=10)
    except grpc.RpcError as exc:
        error: Any = exc
        note(f"{error.code().name}: {error.details()!r}")
        assert error.code() not in NEVER
    _healthy(fuzzed)
