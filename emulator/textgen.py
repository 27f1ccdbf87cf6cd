"""Deterministic answer text, and how a text is cut into stream chunks."""

from __future__ import annotations

import hashlib
import itertools
import random
import re

from gemini_gateway.emulator.schema_values import WORDS

FILLER_WORDS = 24


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def answer_text(prompt: str, system: str, seed: int, variant: int = 0) -> str:
    """'Echo: <prompt>' plus a fixed number of words chosen from the prompt.

    `variant` distinguishes the candidates of one request (candidateCount > 1).
    """
    rng = _rng(seed, system, prompt, variant)
    words = [rng.choice(WORDS) for _ in range(FILLER_WORDS)]
    sentences = [" ".join(words[i : i + 8]).capitalize() + "." for i in range(0, len(words), 8)]
    head = f"Echo: {prompt}"
    if system:
        head += f"\n(system: {system})"
    if variant:
        head += f"\n(candidate {variant})"
    return head + "\n\n" + " ".join(sentences)


_WORD_START = re.compile(r"(?<=\s)(?=\S)")


def split_chunks(text: str, count: int) -> list[str]:
    """Cut `text` into `count` consecutive pieces that join back to `text` exactly.

    Cuts fall on word starts when there are enough words, otherwise between characters.
    Never returns an empty piece; a text shorter than `count` gives fewer pieces.
    """
    count = max(1, min(count, len(text)))
    if count == 1:
        return [text]
    starts = [m.start() for m in _WORD_START.finditer(text)]
    if len(starts) >= count - 1:
        step = len(starts) / count
        cuts = [starts[int(step * (i + 1))] for i in range(count - 1)]
    else:
        cuts = [len(text) * (i + 1) // count for i in range(count - 1)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]
