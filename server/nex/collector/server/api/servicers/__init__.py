"""One servicer per service: validate the message shape, call the use case, convert."""
