"""The NEX Collector service."""
