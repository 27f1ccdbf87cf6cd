"""Suite-wide set-up: every gateway the tests start (in process or as a subprocess) keeps its
store in a temporary folder, never in the user's data folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.pki import pki
from tests.postgres import fresh_url, postgres

__all__ = ["fresh_url", "pki", "postgres"]  # fixtures for every test folder

_STORE_DIR = Path(tempfile.mkdtemp(prefix="gemini-gateway-tests-"))
os.environ.setdefault("GEMINI_GATEWAY_STORE_URL", f"sqlite+aiosqlite:///{_STORE_DIR}/gateway.db")
