"""Every size and count limit on what a caller may send, in one place.

The edge check (api/edge.py) applies the generic ones to every request before a
servicer runs; the domain checks reuse the same numbers for their precise rules.
"""

from __future__ import annotations

# -- ids and names ---------------------------------------------------------------------
MAX_ID = 64  # server-assigned ids: `<prefix>_<26 chars>`, with room to spare
MAX_REQUEST_ID = 128
MAX_NAME = 200  # names, versions, models, NEX context ids
MAX_PATH_COMPONENT = 128  # dataset name/version: they become folder names
MAX_KIND = 64
MAX_NOTE = 4000

# -- pages -----------------------------------------------------------------------------
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN = 1024

# -- labels ----------------------------------------------------------------------------
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256

# -- templates and runs ----------------------------------------------------------------
MAX_TEMPLATE_CHARS = 100_000
MAX_VARIABLES = 100
MAX_VARIABLE_NAME = 64
MAX_VARIABLE_VALUE = 100_000
MAX_RUNS_PER_CALL = 5000
# A deadline further than a year away is no deadline a batch job can mean.
MAX_DEADLINE_S = 366 * 86400

# -- generation params -----------------------------------------------------------------
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS = 20

# -- scores ----------------------------------------------------------------------------
MAX_SCORES = 64  # per SetRunScores call
MAX_SCORE_NAME = 64

# -- datasets --------------------------------------------------------------------------
MAX_BATCHES_PER_DATASET = 100
MAX_DATASET_PARTS = 64  # a build in parts: one job (and files per table) per part
MAX_FILTERS = 32
MAX_PATTERN_LENGTH = 4096

# -- anything else ---------------------------------------------------------------------
MAX_TEXT = 100_000  # a string field with no rule of its own
MAX_LIST = 1000  # a list or map with no rule of its own

# -- errors: what a reply may echo back ------------------------------------------------
MAX_QUOTE = 80  # characters of a caller's value quoted in an error
MAX_FIELD_PATH = 256  # characters of a BadRequest field path
MAX_DESCRIPTION = 512  # characters of a BadRequest description
MAX_VIOLATIONS = 20  # field violations reported per error
MAX_ERROR_MESSAGE_BYTES = 768  # UTF-8 bytes of a status message
# Serialized google.rpc.Status in the grpc-status-details-bin trailer. With the
# message (percent-encoded, up to 3x) the trailers stay under gRPC's 8 KB soft
# metadata limit, past which clients may see RESOURCE_EXHAUSTED instead.
MAX_STATUS_DETAILS_BYTES = 3000
