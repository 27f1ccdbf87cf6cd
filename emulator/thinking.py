"""Thinking models: how many thought tokens a request costs, and the thought summary.

A thinking model (catalog.ThinkingSpec) reports `thoughtsTokenCount` in usageMetadata, counted
in `totalTokenCount`. The count is a function of the prompt, so a repeated request costs the
same: BASE_THOUGHTS + THOUGHTS_PER_PROMPT_TOKEN per prompt token + a prompt-dependent spread,
scaled by thinkingLevel and capped by thinkingBudget. `thinkingConfig.includeThoughts` adds a
short summary as a `"thought": true` part before the answer; the answer itself is unchanged.

`thinkingConfig` is read as Google reads it:
- no budget, or -1: dynamic thinking (2.5 Flash-Lite only thinks when asked to);
- 0: thinking off where the model allows it, else 400;
- a positive budget caps the thoughts; one below the model's minimum is raised to it, one
  above its maximum (or below -1) is refused;
- thinkingLevel (MINIMAL, LOW, MEDIUM, HIGH, XHIGH; any case) scales the thoughts of models that
  take it, and cannot be combined with a budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gemini_gateway.emulator.catalog import ThinkingSpec
from gemini_gateway.emulator.errors import ApiError, detail
from gemini_gateway.emulator.fields import as_int, field, mapping

BASE_THOUGHTS = 64
THOUGHTS_PER_PROMPT_TOKEN = 4
THOUGHTS_SPREAD = 97
LEVEL_SHARE = {
    "THINKING_LEVEL_UNSPECIFIED": 1.0,
    "MINIMAL": 0.25,
    "LOW": 0.5,
    "MEDIUM": 0.75,
    "HIGH": 1.0,
    "XHIGH": 1.5,
}
_LEVEL_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel"
_HEADINGS = ("Reading the request", "Planning the reply", "Weighing the prompt")
_EXCERPT_WORDS = 8


@dataclass(frozen=True)
class Thinking:
    """What thinking adds to one candidate of an answer."""

    tokens: int
    """thoughtsTokenCount of one candidate; 0 when the model does not think."""
    include_thoughts: bool
    """Whether the candidate starts with a thought summary part."""


NO_THINKING = Thinking(0, False)


def _digest(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _quoted(value: Any) -> str:
    """A value as Google quotes it in a parse error: strings in double quotes."""
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def _level_share(level: Any) -> float:
    """The share of full thinking a thinkingLevel asks for; 400 for a value Google rejects."""
    share = LEVEL_SHARE.get(level.upper()) if isinstance(level, str) else None
    if share is None:
        path = "generation_config.thinking_config.thinking_level"
        message = f"Invalid value at '{path}' ({_LEVEL_TYPE}), {_quoted(level)}"
        raise ApiError(
            "INVALID_ARGUMENT",
            message,
            [detail("BadRequest", fieldViolations=[{"field": path, "description": message}])],
        )
    return share


def plan_thinking(
    config: Mapping[str, Any], spec: ThinkingSpec | None, prompt_tokens: int, key: str
) -> Thinking:
    """How a request with generationConfig `config` thinks on a model with `spec`.

    `prompt_tokens` and `key` (the prompt's text) make the count a function of the prompt.
    """
    if spec is None:
        return NO_THINKING
    settings = mapping(config, "thinkingConfig")
    include = field(settings, "includeThoughts") is True
    raw_budget = field(settings, "thinkingBudget")
    budget = as_int(raw_budget) if raw_budget is not None else None
    level = field(settings, "thinkingLevel")
    if budget is not None and level is not None:
        raise ApiError(
            "INVALID_ARGUMENT", "You can only set only one of thinking budget and thinking level."
        )
    share = _level_share(level) if level is not None else 1.0
    if not spec.levels:
        level, share = None, 1.0  # a model without levels ignores the level
    if budget is None or budget == -1:
        if budget is None and level is None and not spec.by_default:
            return NO_THINKING
        cap = spec.max_budget
    elif budget == 0:
        if not spec.can_disable:
            raise ApiError(
                "INVALID_ARGUMENT", "The model does not support setting thinking_budget to 0."
            )
        return NO_THINKING
    elif budget < -1 or budget > spec.max_budget:
        raise ApiError("INVALID_ARGUMENT", f"The thinking budget ({budget}) is invalid.")
    else:
        cap = max(budget, spec.min_budget)
    wanted = (
        BASE_THOUGHTS + THOUGHTS_PER_PROMPT_TOKEN * prompt_tokens + _digest(key) % THOUGHTS_SPREAD
    )
    return Thinking(max(1, min(cap, round(wanted * share))), include)


def thought_summary(prompt_text: str, plan: str, seed: int) -> str:
    """A short summary of the model's thinking, as includeThoughts returns it.

    `plan` is one sentence saying what the answer will be.
    """
    words = prompt_text.split()
    heading = _HEADINGS[_digest(seed, prompt_text) % len(_HEADINGS)]
    if words:
        excerpt = " ".join(words[:_EXCERPT_WORDS]) + (" ..." if len(words) > _EXCERPT_WORDS else "")
        reading = f'The prompt reads "{excerpt}".'
    else:
        reading = "The prompt has no text."
    return f"**{heading}**\n\n{reading} {plan}"
