"""From a GenerateContentRequest body to GenerateContentResponse bodies (unary or chunked).

Pure functions: no HTTP here. The answer is a function of the request, so repeating a
request repeats the answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gemini_gateway.emulator.catalog import ThinkingSpec
from gemini_gateway.emulator.errors import ApiError, invalid_field
from gemini_gateway.emulator.faults import strip_magic
from gemini_gateway.emulator.fields import as_int, field, items, mapping
from gemini_gateway.emulator.schema_values import value_for_schema
from gemini_gateway.emulator.textgen import answer_text, split_chunks
from gemini_gateway.emulator.thinking import plan_thinking, thought_summary
from gemini_gateway.emulator.tokens import count_contents, count_part, modality_details, truncate
from gemini_gateway.emulator.wire import compact

ROLES = frozenset({"", "user", "model", "function", "tool"})
MAX_CANDIDATES = 8


@dataclass
class Prompt:
    """The parts of a request that decide the answer, with magic tokens removed."""

    contents: list[Any]
    system_instruction: Any
    text: str
    system_text: str
    magic: list[str]
    function_responses: list[dict[str, Any]]

    def token_counts(self) -> Counter[str]:
        return count_contents(self.contents, self.system_instruction)


def _clean_content(content: Any, magic: list[str] | None) -> Any:
    """A copy of `content` with magic tokens removed from its text parts.

    Fault words are appended to `magic` when it is given; earlier turns are only cleaned,
    so a fault token in chat history does not fire again on every later turn.
    """
    if not isinstance(content, Mapping):
        return content
    parts = []
    for part in items(content, "parts"):
        text = field(part, "text")
        if isinstance(text, str):
            cleaned, found = strip_magic(text)
            if magic is not None:
                magic.extend(found)
            part = {**part, "text": cleaned}
        parts.append(part)
    return {**content, "parts": parts}


def _texts(content: Any) -> list[str]:
    return [
        field(part, "text")
        for part in items(content, "parts")
        if isinstance(field(part, "text"), str) and not field(part, "thought", False)
    ]


def read_contents(body: Mapping[str, Any], request_type: str) -> list[Any]:
    """Validate `contents` the way Google does and return it."""
    contents = field(body, "contents")
    if not contents:
        raise invalid_field(request_type, "contents", "contents is not specified")
    if not isinstance(contents, list):
        raise invalid_field(request_type, "contents", "contents must be a list")
    for index, content in enumerate(contents):
        if not isinstance(content, Mapping) or not items(content, "parts"):
            raise invalid_field(
                request_type, f"contents[{index}].parts", "contents.parts must not be empty."
            )
        role = field(content, "role", "")
        if role not in ROLES:
            raise ApiError("INVALID_ARGUMENT", "Please use a valid role: user, model.")
    return contents


def read_prompt(body: Mapping[str, Any], request_type: str = "GenerateContentRequest") -> Prompt:
    contents = read_contents(body, request_type)
    magic: list[str] = []
    last_user = max(
        (i for i, c in enumerate(contents) if field(c, "role", "user") != "model"), default=-1
    )
    cleaned = [_clean_content(c, magic if i == last_user else None) for i, c in enumerate(contents)]
    system = field(body, "systemInstruction")
    system = _clean_content(system, magic) if system is not None else None
    last = cleaned[last_user] if last_user >= 0 else {}
    responses = [
        dict(mapping(part, "functionResponse"))
        for part in items(last, "parts")
        if mapping(part, "functionResponse")
    ]
    text = "\n".join(_texts(last))
    if not text and responses:
        text = "; ".join(
            f"{field(r, 'name', 'function')} returned "
            f"{json.dumps(field(r, 'response', {}), sort_keys=True)}"
            for r in responses
        )
    return Prompt(
        contents=cleaned,
        system_instruction=system,
        text=text,
        system_text="\n".join(_texts(system)),
        magic=magic,
        function_responses=responses,
    )


@dataclass
class Candidate:
    parts: list[dict[str, Any]]  # the answer, without the thought summary
    finish_reason: str = "STOP"
    text: str | None = None  # set for text answers; those are the ones streamed in pieces
    thought: str | None = None  # the thought summary, when includeThoughts asked for it

    def content_parts(self) -> list[dict[str, Any]]:
        """The parts of the unary answer: the thought summary first, as at Google."""
        return [*self.thought_parts(), *self.parts]

    def thought_parts(self) -> list[dict[str, Any]]:
        return [{"text": self.thought, "thought": True}] if self.thought is not None else []

    def token_count(self) -> int:
        """candidatesTokenCount of this candidate; thoughts are counted apart."""
        counts: Counter[str] = Counter()
        for part in self.parts:
            count_part(part, counts)
        return sum(counts.values())


@dataclass
class Answer:
    candidates: list[Candidate]
    prompt_counts: Counter[str]
    model_version: str
    response_id: str
    thoughts_tokens: int = 0

    def usage(self, final: bool = True) -> dict[str, Any]:
        """usageMetadata; before the last chunk of a stream the output is not yet counted.

        Thinking comes before the answer, so every chunk already reports the thoughts.
        """
        prompt_tokens = sum(self.prompt_counts.values())
        usage: dict[str, Any] = {"promptTokenCount": prompt_tokens}
        total = prompt_tokens + self.thoughts_tokens
        if final:
            output = sum(c.token_count() for c in self.candidates)
            usage["candidatesTokenCount"] = output
            total += output
        usage["totalTokenCount"] = total
        usage["promptTokensDetails"] = modality_details(self.prompt_counts)
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        return usage

    def _envelope(self, candidates: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        return {
            "candidates": candidates,
            "usageMetadata": self.usage(final),
            "modelVersion": self.model_version,
            "responseId": self.response_id,
        }

    def response(self) -> dict[str, Any]:
        """The unary GenerateContentResponse."""
        return self._envelope(
            [
                {
                    "content": {"parts": c.content_parts(), "role": "model"},
                    "finishReason": c.finish_reason,
                    "index": i,
                }
                for i, c in enumerate(self.candidates)
            ],
            final=True,
        )

    def chunks(self, count: int) -> list[dict[str, Any]]:
        """The stream: text split into up to `count` chunks, each a full response.

        Function calls are never split; an answer with one is sent as a single chunk.
        Thought summaries come first, in a chunk of their own, as the model thinks before
        it answers.
        """
        result = []
        if any(c.thought is not None for c in self.candidates):
            thoughts = [
                {"content": {"parts": c.thought_parts(), "role": "model"}, "index": i}
                for i, c in enumerate(self.candidates)
            ]
            result.append(self._envelope(thoughts, final=False))
        texts = [c.text for c in self.candidates]
        if any(t is None for t in texts):
            count = 1
        else:
            count = max(1, min([count, *(len(t) for t in texts if t is not None)]))
        pieces = [split_chunks(t, count) if t is not None else [] for t in texts]
        for step in range(count):
            final = step == count - 1
            candidates = []
            for i, candidate in enumerate(self.candidates):
                parts = candidate.parts if candidate.text is None else [{"text": pieces[i][step]}]
                entry: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
                if final:
                    entry["finishReason"] = candidate.finish_reason
                entry["index"] = i
                candidates.append(entry)
            result.append(self._envelope(candidates, final))
        return result


def response_id(seed: int, model: str, body: Mapping[str, Any]) -> str:
    """A stable id for the request, shaped like Google's (22 URL-safe characters)."""
    digest = hashlib.sha256(f"{seed}\x1f{model}\x1f{compact(body)}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def _function_calls(body: Mapping[str, Any], prompt: Prompt, seed: int) -> list[dict[str, Any]]:
    """The functionCall parts to answer with, or [] when the model should answer in text."""
    declarations = [
        decl
        for tool in items(body, "tools")
        for decl in items(tool, "functionDeclarations")
        if isinstance(field(decl, "name"), str)
    ]
    config = mapping(mapping(body, "toolConfig"), "functionCallingConfig")
    mode = str(field(config, "mode", "AUTO")).upper()
    allowed = items(config, "allowedFunctionNames")
    if allowed:
        declarations = [d for d in declarations if field(d, "name") in allowed]
    if not declarations or mode == "NONE":
        return []
    lowered = prompt.text.lower()
    chosen = [d for d in declarations if field(d, "name").lower() in lowered]
    if mode != "ANY":
        # After a function response the model reports back in text instead of looping.
        if prompt.function_responses:
            return []
        if not chosen and "call " in lowered:
            chosen = declarations[:1]
    elif not chosen:
        chosen = declarations[:1]
    calls = []
    for decl in chosen:
        name = field(decl, "name")
        schema = field(decl, "parameters") or field(decl, "parametersJsonSchema")
        args = value_for_schema(schema, f"{seed}:{prompt.text}:{name}") if schema else {}
        calls.append(
            {"functionCall": {"name": name, "args": args if isinstance(args, dict) else {}}}
        )
    return calls


def _structured_text(
    config: Mapping[str, Any], prompt: Prompt, seed: int, variant: int
) -> str | None:
    """The text for JSON mode and enum mode, or None for free text."""
    mime = str(field(config, "responseMimeType", "")).lower()
    schema = (
        field(config, "responseSchema")
        or field(config, "responseJsonSchema")
        or config.get("_responseJsonSchema")
    )
    seed_text = f"{seed}:{prompt.system_text}:{prompt.text}:{variant}"
    if mime == "application/json":
        if isinstance(schema, Mapping):
            return json.dumps(value_for_schema(schema, seed_text), ensure_ascii=False)
        return json.dumps({"echo": prompt.text, "candidate": variant}, ensure_ascii=False)
    if mime == "text/x.enum" and isinstance(schema, Mapping):
        options = items(schema, "enum")
        if options:
            return str(options[variant % len(options)])
    return None


def _limit(text: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """Apply stopSequences and maxOutputTokens; return the text and its finishReason."""
    for stop in items(config, "stopSequences"):
        if isinstance(stop, str) and stop and stop in text:
            text = text[: text.index(stop)]
    max_tokens = as_int(field(config, "maxOutputTokens"))
    if max_tokens is not None and max_tokens > 0:
        text, cut = truncate(text, max_tokens)
        if cut:
            return text, "MAX_TOKENS"
    return text, "STOP"


def _plan_sentence(calls: list[dict[str, Any]], structured: bool, config: Mapping[str, Any]) -> str:
    """What the thought summary says the answer will be."""
    if calls:
        names = ", ".join(call["functionCall"]["name"] for call in calls)
        return f"I will call {names} to answer it."
    if structured:
        if str(field(config, "responseMimeType", "")).lower() == "application/json":
            return "I will answer with JSON in the requested shape."
        return "I will answer with one of the allowed values."
    return "I will echo it back and add a few sentences built from its words."


def build_answer(
    body: Mapping[str, Any],
    prompt: Prompt,
    model_version: str,
    seed: int,
    fixed_text: str | None = None,
    thinking: ThinkingSpec | None = None,
) -> Answer:
    """The answer to a GenerateContentRequest.

    `fixed_text` replaces the generated text (tuned models answer from their examples).
    `thinking` is the model's thinking spec; None for models that do not think.
    """
    config = mapping(body, "generationConfig")
    count = as_int(field(config, "candidateCount"), 1) or 1
    if not 1 <= count <= MAX_CANDIDATES:
        raise invalid_field(
            "GenerateContentRequest",
            "generation_config.candidate_count",
            f"candidate_count must be between 1 and {MAX_CANDIDATES}",
        )
    prompt_counts = prompt.token_counts()
    plan = plan_thinking(
        config, thinking, sum(prompt_counts.values()), f"{prompt.system_text}\x1f{prompt.text}"
    )
    calls = [] if fixed_text is not None else _function_calls(body, prompt, seed)
    candidates = []
    for variant in range(count):
        structured = None
        if calls:
            candidate = Candidate(parts=calls)
        else:
            if fixed_text is not None:
                text = fixed_text
            else:
                structured = _structured_text(config, prompt, seed, variant)
                text = structured or answer_text(prompt.text, prompt.system_text, seed, variant)
            text, reason = _limit(text, config)
            candidate = Candidate(parts=[{"text": text}], finish_reason=reason, text=text)
        if plan.include_thoughts and plan.tokens:
            sentence = _plan_sentence(calls, bool(structured), config)
            candidate.thought = thought_summary(prompt.text, sentence, seed)
        candidates.append(candidate)
    return Answer(
        candidates=candidates,
        prompt_counts=prompt_counts,
        model_version=model_version,
        response_id=response_id(seed, model_version, body),
        thoughts_tokens=plan.tokens * count,
    )


def count_tokens_response(body: Mapping[str, Any]) -> dict[str, Any]:
    """CountTokensResponse for `contents` or a whole `generateContentRequest`."""
    inner = mapping(body, "generateContentRequest")
    source = inner if inner else body
    request_type = "GenerateContentRequest" if inner else "CountTokensRequest"
    prompt = read_prompt(source, request_type)
    counts = prompt.token_counts()
    return {"totalTokens": sum(counts.values()), "promptTokensDetails": modality_details(counts)}
