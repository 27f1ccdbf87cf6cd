"""Suite-wide set-up: every gateway the tests start (in process or as a subprocess) keeps its
store in a temporary folder, never in the user's data folder.

Gateways write their store in-process unless a test asks for the store writer process
(`writer_process=True`): starting one costs a new interpreter (~1.3 s of CPU), and the suite
starts hundreds of gateways. The child is covered where it matters: tests/store and
tests/integration/test_writer_process.py, the logs and usage integration tests, and every
command of the docs (run with the user's defaults).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.pki import pki
from tests.postgres import fresh_url, postgres

__all__ = ["fresh_url", "pki", "postgres"]  # fixtures for every test folder

_STORE_DIR = Path(tempfile.mkdtemp(prefix="gemini-gateway-tests-"))
os.environ.setdefault("GEMINI_GATEWAY_WRITER_PROCESS", "false")
os.environ.setdefault("GEMINI_GATEWAY_STORE_URL", f"sqlite+aiosqlite:///{_STORE_DIR}/gateway.db")
