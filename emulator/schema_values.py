"""Deterministic values that satisfy a schema.

Understands Google's Schema (type names "OBJECT", "STRING", ..., `nullable`,
`propertyOrdering`, int64 bounds as strings) and JSON Schema (lower-case types, type lists,
`$ref` into `$defs`/`definitions`, `anyOf`/`oneOf`/`allOf`, `const`). Values depend only on
the seed text and the position in the schema, so the same request yields the same JSON.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from gemini_gateway.emulator.fields import as_float, as_int, field, items, mapping

WORDS = (
    "amber", "birch", "cedar", "delta", "ember", "fable", "garnet", "harbor", "indigo",
    "juniper", "kestrel", "lumen", "meadow", "nimbus", "orchid", "pebble", "quartz", "raven",
    "saffron", "timber", "umber", "violet", "willow", "zephyr",
)  # fmt: skip

_MAX_DEPTH = 12


def _hash(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _type_of(schema: Mapping[str, Any]) -> str:
    raw = field(schema, "type")
    if isinstance(raw, list):
        raw = next((t for t in raw if str(t).lower() != "null"), "null")
    if isinstance(raw, str) and raw and raw.upper() != "TYPE_UNSPECIFIED":
        return raw.lower()
    if field(schema, "properties") is not None:
        return "object"
    if field(schema, "items") is not None:
        return "array"
    return "string"


class SchemaValues:
    """Generator bound to one seed and one root schema (for `$ref` resolution)."""

    def __init__(self, seed: str, root: Mapping[str, Any]) -> None:
        self.seed = seed
        self.root = root

    def value(self, schema: Any, path: str = "$", name: str = "value", depth: int = 0) -> Any:
        if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        for key in ("anyOf", "oneOf"):
            options = [o for o in items(schema, key) if isinstance(o, Mapping)]
            non_null = [o for o in options if _type_of(self._resolve(o)) != "null"]
            if options:
                return self.value((non_null or options)[0], path, name, depth + 1)
        all_of = [o for o in items(schema, "allOf") if isinstance(o, Mapping)]
        if all_of:
            merged: dict[str, Any] = {}
            for option in all_of:
                merged.update(self._resolve(option))
            return self.value(merged, path, name, depth + 1)
        enum = items(schema, "enum")
        if enum:
            return enum[0]
        kind = _type_of(schema)
        handler = {
            "object": self._object,
            "array": self._array,
            "integer": self._integer,
            "number": self._number,
            "boolean": self._boolean,
            "null": lambda *_: None,
        }.get(kind, self._string)
        return handler(schema, path, name, depth)

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        for _ in range(_MAX_DEPTH):
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target: Any = self.root
            for key in ref[2:].split("/"):
                target = target.get(key) if isinstance(target, Mapping) else None
            if not isinstance(target, Mapping):
                return {}
            schema = target
            ref = schema.get("$ref")
        return schema

    def _object(self, schema: Mapping[str, Any], path: str, _name: str, depth: int) -> Any:
        properties = mapping(schema, "properties")
        order = [p for p in items(schema, "propertyOrdering") if p in properties]
        order += [p for p in properties if p not in order]
        return {
            prop: self.value(properties[prop], f"{path}.{prop}", prop, depth + 1) for prop in order
        }

    def _array(self, schema: Mapping[str, Any], path: str, name: str, depth: int) -> Any:
        low = as_int(field(schema, "minItems"), 0) or 0
        high = as_int(field(schema, "maxItems"))
        count = max(2, low)
        if high is not None:
            count = min(count, high)
        item_schema = field(schema, "items", {})
        return [self.value(item_schema, f"{path}[{i}]", name, depth + 1) for i in range(count)]

    def _bounds(self, schema: Mapping[str, Any]) -> tuple[float | None, float | None]:
        low = as_float(field(schema, "minimum"))
        high = as_float(field(schema, "maximum"))
        exclusive_low = as_float(field(schema, "exclusiveMinimum"))
        exclusive_high = as_float(field(schema, "exclusiveMaximum"))
        if exclusive_low is not None:
            low = exclusive_low + 1 if low is None else max(low, exclusive_low + 1)
        if exclusive_high is not None:
            high = exclusive_high - 1 if high is None else min(high, exclusive_high - 1)
        return low, high

    def _integer(self, schema: Mapping[str, Any], path: str, _name: str, _depth: int) -> Any:
        low, high = self._bounds(schema)
        start = int(low) if low is not None else 1
        end = int(high) if high is not None else start + 99
        if end < start:
            return start
        return start + _hash(self.seed, path) % (end - start + 1)

    def _number(self, schema: Mapping[str, Any], path: str, name: str, depth: int) -> Any:
        whole = self._integer(schema, path, name, depth)
        _, high = self._bounds(schema)
        return whole + 0.5 if high is None or whole + 0.5 <= high else float(whole)

    def _boolean(self, _schema: Mapping[str, Any], path: str, _name: str, _depth: int) -> Any:
        return _hash(self.seed, path) % 2 == 0

    def _string(self, schema: Mapping[str, Any], path: str, name: str, _depth: int) -> Any:
        h = _hash(self.seed, path)
        fmt = str(field(schema, "format", "")).lower()
        formatted = {
            "date-time": "2025-01-15T09:30:00Z",
            "date": "2025-01-15",
            "time": "09:30:00",
            "email": f"{WORDS[h % len(WORDS)]}@example.com",
            "uri": f"https://example.com/{WORDS[h % len(WORDS)]}",
            "url": f"https://example.com/{WORDS[h % len(WORDS)]}",
            "uuid": str(uuid.UUID(int=h << 64 | h, version=4)),
        }.get(fmt)
        if formatted is not None:
            return formatted
        text = f"{name} {WORDS[h % len(WORDS)]}"
        low = as_int(field(schema, "minLength"), 0) or 0
        high = as_int(field(schema, "maxLength"))
        if len(text) < low:
            text = text + "x" * (low - len(text))
        if high is not None:
            text = text[:high]
        return text


def value_for_schema(schema: Mapping[str, Any], seed: str) -> Any:
    """A deterministic value of `schema` derived from `seed`."""
    return SchemaValues(seed, schema).value(schema)
