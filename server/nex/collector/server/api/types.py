"""Type aliases for grpc.aio's generic classes (generic only in the stubs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

if TYPE_CHECKING:
    Context: TypeAlias = aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Context = aio.ServicerContext
    Handler = grpc.RpcMethodHandler
