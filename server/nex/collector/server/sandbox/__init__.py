"""The template sandbox: processes that compile and render caller-supplied
templates under CPU and memory limits, away from the server's event loop
(`pool` is the server's side, `child` the process, `protocol` what they say)."""
