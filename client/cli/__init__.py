"""The `gemini-gateway` command line (installed with the full distribution, not the client)."""

from gemini_gateway.cli.main import app

__all__ = ["app"]
