"""Runs the arq worker inside a process built by bootstrap."""

from __future__ import annotations

import asyncio

from nex.collector.server.bootstrap import Container


async def run_worker(container: Container, stop: asyncio.Event) -> None:
    await stop.wait()
