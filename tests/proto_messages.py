"""Hypothesis strategies for protobuf messages: any field of a descriptor, any value, and
names shaped like the API's resources (so generated calls reach the route table)."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

MAX_DEPTH = 6

# Values for fields that name resources, shaped like the API's names (and a few that are
# not), so that generated calls reach the route table, the tenancy checks and the upstream.
NAMES = st.one_of(
    st.sampled_from(
        [
            "models/gemini-2.5-flash",
            "models/text-embedding-004",
            "tunedModels/fuzz-model",
            "tunedModels/fuzz-model/operations/op1",
            "batches/fuzz-batch",
            "batches",
            "generatedFiles/f/operations/o",
            "dynamic/x",
            "projects/fuzz",
            "projects/-",
            "projects/fuzz/datasets/d1",
            "projects/fuzz/datasets/d1/runs/r1",
            "projects/fuzz/logs/0123456789ab0123456789ab",
            "projects/fuzz/loggingSettings",
            "models/../tunedModels/x",
            "tunedModels/a%2Fb",
            "models/",
            "",
        ]
    ),
    st.text(max_size=24),
)
NAME_FIELDS = frozenset(
    {"name", "model", "parent", "dataset", "tuned_model", "base_model", "log_names", "names"}
)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return NAMES if field.name in NAME_FIELDS else st.text(max_size=24)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=24)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:  # mostly known values, sometimes not
        known = st.sampled_from([value.number for value in field.enum_type.values])
        return st.one_of(known, known, known, st.integers(-3, 500))
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    low, high = _INT_RANGES[kind]
    small = st.integers(max(low, -5), min(high, 100))
    return st.one_of(small, small, small, st.integers(low, high))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Any:
    """A message of `descriptor` with a few generated fields set (nested MAX_DEPTH deep)."""
    message = message_factory.GetMessageClass(descriptor)()
    fields = [
        field
        for field in descriptor.fields
        if field.type != FieldDescriptor.TYPE_MESSAGE or depth < MAX_DEPTH
    ]
    if not fields:
        return message
    # Fewer fields the deeper the message, so that deep paths are reached without the
    # messages growing without bound.
    most = max(1, 4 - depth)
    chosen = draw(st.lists(st.sampled_from(fields), max_size=most, unique_by=lambda f: f.name))
    for field in chosen:
        _fill(draw, message, field, depth)
    return message


def _fill(draw: st.DrawFn, message: Any, field: FieldDescriptor, depth: int) -> None:
    entry = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        target = getattr(message, field.name)
        for _ in range(draw(st.integers(0, 2))):
            key = draw(scalars(key_field))
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(draw(messages(value_field.message_type, depth + 1)))
            else:
                target[key] = draw(scalars(value_field))
        return
    if field.is_repeated:
        target = getattr(message, field.name)
        for _ in range(draw(st.integers(0, 2))):
            if entry is not None:
                target.add().CopyFrom(draw(messages(entry, depth + 1)))
            else:
                target.append(draw(scalars(field)))
        return
    if entry is not None:
        getattr(message, field.name).CopyFrom(draw(messages(entry, depth + 1)))
    else:
        setattr(message, field.name, draw(scalars(field)))
