"""Pure domain code: entities, rules and errors. No gRPC, no SQL."""
