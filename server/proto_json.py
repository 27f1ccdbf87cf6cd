"""Proto3 JSON to messages and back, as protobuf's json_format does it, at a fraction of its cost.

json_format is pure Python and generic: for every field of every message it rebuilds lookup
tables, formats error paths and asks the descriptor what kind the field is. On the forwarding
path that was the largest single cost of a call after the gRPC and HTTP machinery. Here each
message type gets a plan once (its fields by JSON and proto name, with the conversion each
needs), and a message is converted by walking the plan.

The plans cover what Google's answers and requests are made of: scalars, enums by name,
bytes, nested and repeated messages, and maps with string keys. Well-known types (Struct,
Value, Timestamp, Duration, Any, wrappers...) are handed to json_format for their subtree.
Anything else, and any value the plan is not sure of (a null, a number spelt as a string,
an unknown enum name, a duplicate or oneof clash, lone surrogates, nesting past
SHALLOW_DEPTH), makes the whole conversion start again in json_format: so every result and
every error is json_format's own, and tests compare the two on generated messages.

parse() is ParseDict(value, cls(), ignore_unknown_fields=True) of a JSON text's value;
to_dict() is MessageToDict with its defaults.
"""

from __future__ import annotations

import base64
import math
from typing import Any, TypeVar

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

# json_format's own limit on nested messages; the plans give up well before it.
MAX_DEPTH = 100
SHALLOW_DEPTH = 32
_FLOAT_MAX = 3.4028234663852886e38

# Field kinds, one per conversion; _OTHER is left to json_format.
_STRING, _BYTES, _BOOL, _INT, _FLOAT32, _DOUBLE, _ENUM, _MESSAGE, _WKT, _OTHER = range(10)
_INT_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_INT64_TYPES = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})


def _custom_enum_names() -> bool:
    """Whether enum values may carry JSON names of their own (json_format looks for this)."""
    try:
        descriptor_pool.Default().FindExtensionByName("pb.enumvalue.json")
    except KeyError:
        return False
    return True


_CUSTOM_ENUM_NAMES = _custom_enum_names()


class _GiveUp(Exception):
    """The plan is not sure of a value: json_format converts the whole message instead."""


def _kind(field: Any) -> int:  # a FieldDescriptor (its stubs make every link optional)
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        return _WKT if field.message_type.full_name.startswith("google.protobuf.") else _MESSAGE
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        return _BYTES if field.type == FieldDescriptor.TYPE_BYTES else _STRING
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return _BOOL
    if cpp in _INT_TYPES:
        return _INT
    if cpp == FieldDescriptor.CPPTYPE_FLOAT:
        return _FLOAT32
    if cpp == FieldDescriptor.CPPTYPE_DOUBLE:
        return _DOUBLE
    if field.enum_type.full_name == "google.protobuf.NullValue" or _CUSTOM_ENUM_NAMES:
        return _OTHER  # JSON null, or names other than the enum's own
    return _ENUM


class _Field:
    """One field of a plan: how its JSON value is converted and stored."""

    __slots__ = ("enum", "kind", "map_key_string", "map_value", "name", "oneof", "repeated")

    def __init__(self, field: Any) -> None:
        self.name = field.name
        self.oneof = field.containing_oneof.name if field.containing_oneof else None
        self.map_value: _Field | None = None
        self.map_key_string = False
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            self.map_key_string = key.cpp_type == FieldDescriptor.CPPTYPE_STRING
            self.map_value = _Field(value)
        self.repeated = field.is_repeated and self.map_value is None
        self.kind = _kind(field)
        self.enum: Any = field.enum_type


_PARSE_PLANS: dict[Any, dict[str, _Field] | None] = {}


def _parse_plan(descriptor: Any) -> dict[str, _Field] | None:
    """Fields by JSON name and proto name; None for a message the plans do not cover."""
    try:
        return _PARSE_PLANS[descriptor]
    except KeyError:
        pass
    plan: dict[str, _Field] | None = {}
    if descriptor.full_name.startswith("google.protobuf.") or descriptor.is_extendable:
        plan = None
    else:
        planned = [(field, _Field(field)) for field in descriptor.fields]
        # A JSON name wins over another field's proto name, as in json_format.
        plan = {field.name: entry for field, entry in planned}
        plan.update((field.json_name, entry) for field, entry in planned)
    _PARSE_PLANS[descriptor] = plan
    return plan


def parse(text: str | bytes, value: Any, message_class: type[M]) -> M:
    """json_format.ParseDict(value, message_class(), ignore_unknown_fields=True), where
    `value` is the json.loads of `text` (read only to rule out lone surrogates)."""
    if type(value) is dict and not _may_hold_lone_surrogates(text):
        message = message_class()
        try:
            _fill(message, value, 1)
            return message
        except Exception:  # whatever it is, json_format decides (module docstring)
            pass
    return json_format.ParseDict(value, message_class(), ignore_unknown_fields=True)


def _may_hold_lone_surrogates(text: str | bytes) -> bool:
    """Whether JSON text has a \\uD800-\\uDFFF escape: json.loads may then give a string a
    lone surrogate, which json_format refuses and the plans do not look for."""
    if isinstance(text, bytes):
        return b"\\ud" in text or b"\\uD" in text
    return "\\ud" in text or "\\uD" in text


def _fill(message: Message, js: dict[str, Any], depth: int) -> None:
    plan = _parse_plan(message.DESCRIPTOR)
    if plan is None or depth > SHALLOW_DEPTH:
        raise _GiveUp
    seen: set[str] = set()
    for key, value in js.items():
        field = plan.get(key)
        if field is None:
            if key[:1] == "[":  # an extension name: json_format's own rules apply
                raise _GiveUp
            continue  # unknown fields are ignored
        if value is None or field.name in seen or (field.oneof and field.oneof in seen):
            raise _GiveUp
        seen.add(field.name)
        if field.oneof:
            seen.add(field.oneof)
        if field.map_value is not None:
            _fill_map(getattr(message, field.name), field, value, depth)
        elif field.repeated:
            if type(value) is not list:
                raise _GiveUp
            target = getattr(message, field.name)
            if field.kind == _MESSAGE:
                for item in value:
                    if type(item) is not dict:
                        raise _GiveUp
                    _fill(target.add(), item, depth + 1)
            elif field.kind == _WKT:
                for item in value:
                    _fill_wkt(target.add(), item, depth)
            else:
                target.extend([_scalar(field, item) for item in value])
        elif field.kind == _MESSAGE:
            if type(value) is not dict:
                raise _GiveUp
            sub = getattr(message, field.name)
            sub.SetInParent()
            _fill(sub, value, depth + 1)
        elif field.kind == _WKT:
            sub = getattr(message, field.name)
            sub.SetInParent()
            _fill_wkt(sub, value, depth)
        else:
            setattr(message, field.name, _scalar(field, value))


def _fill_map(target: Any, field: _Field, value: Any, depth: int) -> None:
    entry = field.map_value
    if type(value) is not dict or not field.map_key_string or entry is None:
        raise _GiveUp
    for key, item in value.items():
        if item is None:
            raise _GiveUp
        if entry.kind == _MESSAGE:
            if type(item) is not dict:
                raise _GiveUp
            _fill(target[key], item, depth + 1)
        elif entry.kind == _WKT:
            _fill_wkt(target[key], item, depth)
        else:
            target[key] = _scalar(entry, item)


def _fill_wkt(message: Message, value: Any, depth: int) -> None:
    """A well-known type's subtree, by json_format, within the same depth budget."""
    json_format.ParseDict(
        value, message, ignore_unknown_fields=True, max_recursion_depth=MAX_DEPTH - depth
    )


def _scalar(field: _Field, value: Any) -> Any:
    kind = field.kind
    kind_of_value = type(value)
    if kind == _STRING:
        if kind_of_value is str:
            return value  # no lone surrogates: parse() made sure
    elif kind == _INT:
        if kind_of_value is int:
            return value
    elif kind == _BOOL:
        if kind_of_value is bool:
            return value
    elif kind == _ENUM:
        if kind_of_value is str:
            number = field.enum.values_by_name.get(value)
            if number is not None:
                return number.number
    elif kind == _DOUBLE or kind == _FLOAT32:
        if (kind_of_value is float and math.isfinite(value)) or kind_of_value is int:
            if kind == _DOUBLE or -_FLOAT_MAX <= value <= _FLOAT_MAX:
                return float(value)
    elif kind == _BYTES and kind_of_value is str:
        encoded = value.encode("utf-8")
        return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
    raise _GiveUp


# Printing: per field descriptor, its JSON name and how its values are written.
_PRINT_PLANS: dict[Any, tuple[str, int, bool, Any] | None] = {}


def _print_plan(field: Any) -> tuple[str, int, bool, Any] | None:
    try:
        return _PRINT_PLANS[field]
    except KeyError:
        pass
    plan: tuple[str, int, bool, Any] | None
    if field.is_extension:
        plan = None
    else:
        entry = field.message_type
        is_map = entry is not None and entry.GetOptions().map_entry
        if is_map:
            value_field = entry.fields_by_name["value"]
            key_field = entry.fields_by_name["key"]
            plan = (
                field.json_name,
                -1,
                key_field.cpp_type == FieldDescriptor.CPPTYPE_BOOL,
                value_field,
            )
        else:
            kind = _kind(field)
            extra: Any = field.enum_type
            if kind == _INT:
                extra = field.cpp_type in _INT64_TYPES
            plan = (field.json_name, kind, field.is_repeated, extra)
    _PRINT_PLANS[field] = plan
    return plan


def to_dict(message: Message) -> dict[str, Any]:
    """json_format.MessageToDict(message), with its default options."""
    if not message.DESCRIPTOR.full_name.startswith("google.protobuf."):
        try:
            return _dict(message)
        except Exception:  # whatever it is, json_format decides (module docstring)
            pass
    return json_format.MessageToDict(message)


def _dict(message: Message) -> dict[str, Any]:
    js: dict[str, Any] = {}
    for field, value in message.ListFields():
        plan = _print_plan(field)
        if plan is None:
            raise _GiveUp
        name, kind, repeated, extra = plan
        if kind == -1:  # a map: `extra` is its value field
            value_plan = _print_plan(extra)
            if value_plan is None:
                raise _GiveUp
            key_is_bool = repeated
            js[name] = {
                (("true" if key else "false") if key_is_bool else str(key)): _value(
                    value_plan[1], value_plan[3], item
                )
                for key, item in value.items()
            }
        elif repeated:
            js[name] = [_value(kind, extra, item) for item in value]
        else:
            js[name] = _value(kind, extra, value)
    return js


def _value(kind: int, extra: Any, value: Any) -> Any:
    if kind == _STRING or kind == _BOOL:
        return value
    if kind == _MESSAGE:
        return _dict(value)
    if kind == _INT:
        return str(value) if extra else value
    if kind == _ENUM:
        enum_value = extra.values_by_number.get(value)
        if enum_value is None:
            raise _GiveUp  # json_format's rule for unknown numbers applies
        return enum_value.name
    if kind == _WKT:
        return json_format.MessageToDict(value)
    if kind == _BYTES:
        return base64.b64encode(value).decode("utf-8")
    if kind == _OTHER or not math.isfinite(value):
        raise _GiveUp  # NaN and the infinities are spelt as strings: json_format's way
    if kind == _FLOAT32:
        return type_checkers.ToShortestFloat(value)
    return value
