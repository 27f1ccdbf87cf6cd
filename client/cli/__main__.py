"""`python -m gemini_gateway.cli`: the same as the `gemini-gateway` command."""

from gemini_gateway.cli.main import app

app()
