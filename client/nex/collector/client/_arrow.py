"""pyarrow for ``read_dataset`` / ``iter_dataset_batches``: an optional extra
(``pip install 'nex-collector-client[arrow]'``), imported on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["batch_from_message", "require_pyarrow", "schema_from_message"]

_HINT = (
    "reading datasets needs pyarrow: pip install 'nex-collector-client[arrow]' "
    "(or pip install pyarrow)"
)


def require_pyarrow() -> Any:
    """The pyarrow module, or an ImportError saying how to install it."""
    try:
        import pyarrow
        import pyarrow.ipc
    except ImportError as exc:
        raise ImportError(_HINT, name="pyarrow") from exc
    return pyarrow


def schema_from_message(message: bytes) -> Any:
    pa = require_pyarrow()
    return pa.ipc.read_schema(pa.py_buffer(message))


def batch_from_message(message: bytes, schema: Any) -> Any:
    pa = require_pyarrow()
    return pa.ipc.read_record_batch(pa.py_buffer(message), schema)
