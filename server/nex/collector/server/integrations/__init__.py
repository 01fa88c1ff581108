"""Clients of the systems the collector works with (NEX)."""
