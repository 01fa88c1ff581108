"""The `nex-collector` command line."""

import os

# Our processes never fork a process that goes on to use gRPC (they only start
# PostgreSQL/Redis helpers); without this, gRPC logs a fork warning each time.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
