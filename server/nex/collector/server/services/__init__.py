"""The use cases: one module per service, shared by the gRPC process and the worker."""
