"""The emulator's token rule, shared by countTokens and usageMetadata.

A token is a run of word characters or a single other non-blank character
(regex `\\w+|[^\\w\\s]`): "Hello, world!" is 4 tokens. Media parts count a flat 258 tokens,
the figure Google quotes for an image.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from gemini_gateway.emulator.fields import field, items, mapping

TOKEN = re.compile(r"\w+|[^\w\s]")
MEDIA_PART_TOKENS = 258


def count_text(text: str) -> int:
    return sum(1 for _ in TOKEN.finditer(text))


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """The prefix of `text` holding at most `max_tokens` tokens, and whether it was cut."""
    for index, match in enumerate(TOKEN.finditer(text)):
        if index == max_tokens:
            return text[: match.start()].rstrip(), True
    return text, False


def _media_modality(mime_type: str) -> str:
    kind = mime_type.split("/", 1)[0].upper()
    if kind in ("IMAGE", "AUDIO", "VIDEO"):
        return kind
    return "DOCUMENT"


def count_part(part: Any, counts: Counter[str]) -> None:
    """Add the tokens of one Part to `counts`, keyed by modality."""
    text = field(part, "text")
    if isinstance(text, str):
        counts["TEXT"] += count_text(text)
        return
    for name in ("functionCall", "functionResponse"):
        value = mapping(part, name)
        if value:
            counts["TEXT"] += count_text(json.dumps(value, sort_keys=True))
            return
    for name in ("inlineData", "fileData"):
        value = mapping(part, name)
        if value:
            mime = str(field(value, "mimeType", "application/octet-stream"))
            counts[_media_modality(mime)] += MEDIA_PART_TOKENS
            return


def count_contents(contents: list[Any], system_instruction: Any = None) -> Counter[str]:
    """Tokens of a prompt (all turns plus the system instruction), by modality."""
    counts: Counter[str] = Counter()
    for content in [*contents, system_instruction]:
        for part in items(content, "parts"):
            count_part(part, counts)
    return counts


def modality_details(counts: Counter[str]) -> list[dict[str, Any]]:
    """`promptTokensDetails` entries; TEXT is always listed, like Google does."""
    details = [{"modality": "TEXT", "tokenCount": counts.get("TEXT", 0)}]
    details += [
        {"modality": modality, "tokenCount": count}
        for modality, count in sorted(counts.items())
        if modality != "TEXT"
    ]
    return details
