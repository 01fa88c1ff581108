"""The two consoles every command prints to: human output on stdout (off
with --quiet), errors and notes on stderr."""

from rich.console import Console

__all__ = ["err", "out"]

out = Console(highlight=False)
"""Human output (stdout)."""
err = Console(stderr=True, highlight=False)
"""Errors and notes (stderr)."""
