"""Typed client for NEX Collector."""
