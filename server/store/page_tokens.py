"""Page tokens of the store's listings: a small JSON object, URL-safe base64 without padding.

Each listing puts what it needs to resume in the object (the last key seen, what the listing
was over) and checks it when the token comes back; this module only packs and unpacks.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any


def encode_page_token(fields: Mapping[str, object]) -> str:
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> dict[str, Any] | None:
    """The object a token carries; None for text that is not a token of this form."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None
