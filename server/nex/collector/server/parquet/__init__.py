"""Distilled datasets: streaming Parquet files plus a checksummed manifest.

See docs/dataset-format.md for the files and their columns.
"""

from nex.collector.server.parquet.builder import (
    DEFAULT_MAX_ROW_GROUP_BYTES,
    DEFAULT_ROW_GROUP_SIZE,
    Progress,
    build_dataset,
)
from nex.collector.server.parquet.schema import FILE_NAMES, FORMAT_VERSION, SCHEMAS
from nex.collector.server.parquet.storage import (
    MANIFEST_NAME,
    DatasetStore,
    Location,
    StorageConfigError,
)
from nex.collector.server.parquet.verify import verify_dataset
from nex.collector.server.parquet.writer import (
    BuildResult,
    DatasetExistsError,
    remove_stale_staging,
)

__all__ = [
    "DEFAULT_MAX_ROW_GROUP_BYTES",
    "DEFAULT_ROW_GROUP_SIZE",
    "FILE_NAMES",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SCHEMAS",
    "BuildResult",
    "DatasetExistsError",
    "DatasetStore",
    "Location",
    "Progress",
    "StorageConfigError",
    "build_dataset",
    "remove_stale_staging",
    "verify_dataset",
]
