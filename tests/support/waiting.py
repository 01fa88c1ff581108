"""Waiting for something to happen, never for a stretch of time."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(what: str, check: Callable[[], bool], timeout: float = 60, poll: float = 0.02) -> None:
    """Returns once `check()` is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
