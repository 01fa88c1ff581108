"""`python -m nex.collector.server.cli` is `nex-collector`."""

from nex.collector.server.cli.main import app

app()
