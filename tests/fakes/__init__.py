"""Fakes of external services, used by tests and benchmarks."""
