"""A real S3-compatible server on loopback: moto's standalone server (the
werkzeug app it serves to any SDK), one per test session, a bucket per test."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from nex.collector.server.parquet.storage import DatasetStore

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str  # http://127.0.0.1:PORT

    @property
    def env(self) -> dict[str, str]:
        """The variables a collector (or any AWS SDK) needs to use this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def admin(self) -> pafs.S3FileSystem:
        """A filesystem allowed to create buckets (the collector's is not)."""
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            endpoint_override=self.endpoint_url.removeprefix("http://"),
            scheme="http",
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )

    def new_bucket(self) -> str:
        name = f"ds-{uuid.uuid4().hex[:12]}"
        self.admin().create_dir(name)
        return name

    def store(self, uri: str) -> DatasetStore:
        return DatasetStore.from_uri(uri, env=self.env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


if __name__ == "__main__":  # a server for trying things by hand: python -m tests.support.s3
    import time

    with s3_server() as s3:
        print(s3.endpoint_url, s3.new_bucket(), flush=True)
        while True:
            time.sleep(3600)
