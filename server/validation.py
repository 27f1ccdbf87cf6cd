"""Request checks the gateway makes before any upstream call.

Each validator returns every problem it finds as (field path, description); the forwarder
turns a non-empty list into one INVALID_ARGUMENT with a google.rpc.BadRequest naming each
field. Field paths use proto field names, as Google's BadRequest details do.

Three checks apply to every request of every service, before any handler sees it:

- `decode_request`: bytes that are not the method's request message are INVALID_ARGUMENT,
  never gRPC's UNKNOWN. The message says why when it can find out: the field holding a
  string that is not UTF-8, a length running past the end, nesting deeper than protobuf's
  100 levels (messages nested that deep are refused while decoding, so nothing later
  recurses through them).
- `check_values`: values the message type allows but the API does not: an enum number the
  enum does not define, a Duration or Timestamp outside the range proto3 JSON can write, a
  FieldMask path that names no field path, a NaN or infinity in a google.protobuf.Value, a
  negative `page_size`. Each is named by its field path. (FieldMask paths given in JSON
  spelling, `displayName`, are rewritten in proto spelling, `display_name`, on the way.)
- the per-method validators of VALIDATORS (the forwarder's hook).

The forwarder and the operations handlers decode their requests themselves
(`decoding_handler`); `RequestDecodingInterceptor` does the same for every other service
(the gateway's own, health and reflection), so that no request is decoded by gRPC itself,
whose failure would be UNKNOWN with a Python class name and would reach no interceptor
(metrics included).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from functools import cache, partial
from typing import Any, Literal

import grpc
from google.protobuf import symbol_database
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    model_service_pb2,
    tuned_model_pb2,
)
from gemini_gateway.server import errors

Violations = list[tuple[str, str]]

TUNED_MODEL_ID = re.compile(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?")
DISPLAY_NAME_MAX = 40
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
# The TunedModel fields UpdateTunedModel may change.
UPDATABLE_TUNED_MODEL_FIELDS = frozenset(
    {"display_name", "description", "temperature", "top_p", "top_k", "reader_project_numbers"}
)


def _sampling(model: tuned_model_pb2.TunedModel, prefix: str, only: set[str] | None) -> Violations:
    """Range checks of the sampling defaults (only the fields in `only`, when given)."""
    problems: Violations = []

    def wanted(name: Literal["temperature", "top_p", "top_k"]) -> bool:
        return model.HasField(name) and (only is None or name in only)

    low, high = TEMPERATURE_RANGE
    if wanted("temperature") and not low <= model.temperature <= high:
        problems.append((f"{prefix}temperature", f"must be between {low} and {high}"))
    low, high = TOP_P_RANGE
    if wanted("top_p") and not low <= model.top_p <= high:
        problems.append((f"{prefix}top_p", f"must be between {low} and {high}"))
    if wanted("top_k") and model.top_k < 0:
        problems.append((f"{prefix}top_k", "must not be negative"))
    if (only is None or "display_name" in only) and len(model.display_name) > DISPLAY_NAME_MAX:
        problems.append((f"{prefix}display_name", f"must be at most {DISPLAY_NAME_MAX} characters"))
    return problems


def _hyperparameters(params: tuned_model_pb2.Hyperparameters, prefix: str) -> Violations:
    problems: Violations = []
    for name in ("learning_rate", "learning_rate_multiplier", "epoch_count", "batch_size"):
        if params.HasField(name):
            value = getattr(params, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append((f"{prefix}{name}", "must be positive"))
    return problems


def _examples(dataset: tuned_model_pb2.Dataset, prefix: str) -> Violations:
    examples = dataset.examples.examples
    if not examples:
        return [(f"{prefix}examples.examples", "at least one training example is required")]
    problems: Violations = []
    input_kinds = set()
    for index, example in enumerate(examples):
        path = f"{prefix}examples.examples[{index}]"
        kind = example.WhichOneof("model_input")
        if kind is None:
            problems.append((f"{path}.text_input", "every example needs an input"))
        else:
            input_kinds.add(kind)
        if not example.output:
            problems.append((f"{path}.output", "every example needs an output"))
    if len(input_kinds) > 1:
        problems.append(
            (f"{prefix}examples.examples", "all examples must use the same kind of input")
        )
    return problems


def create_tuned_model(request: Message) -> Violations:
    assert isinstance(request, model_service_pb2.CreateTunedModelRequest)
    problems: Violations = []
    if request.HasField("tuned_model_id") and not TUNED_MODEL_ID.fullmatch(request.tuned_model_id):
        problems.append(
            (
                "tuned_model_id",
                f"must match {TUNED_MODEL_ID.pattern} (got {request.tuned_model_id!r})",
            )
        )
    model = request.tuned_model
    if model.WhichOneof("source_model") is None:
        problems.append(("tuned_model.base_model", "base_model or tuned_model_source is required"))
    elif model.HasField("tuned_model_source") and not model.tuned_model_source.tuned_model:
        problems.append(
            ("tuned_model.tuned_model_source.tuned_model", "names the tuned model to start from")
        )
    problems += _sampling(model, "tuned_model.", None)
    task = model.tuning_task
    problems += _examples(task.training_data, "tuned_model.tuning_task.training_data.")
    problems += _hyperparameters(task.hyperparameters, "tuned_model.tuning_task.hyperparameters.")
    return problems


def _snake_case(path: str) -> str:
    """Masks may arrive in JSON spelling (displayName) as well as proto spelling."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", path).lower()


def update_tuned_model(request: Message) -> Violations:
    assert isinstance(request, model_service_pb2.UpdateTunedModelRequest)
    paths = list(request.update_mask.paths)
    if not paths:
        return [("update_mask", "is required: name the fields to update")]
    problems: Violations = []
    named = {_snake_case(path) for path in paths}
    for path in paths:
        if _snake_case(path) not in UPDATABLE_TUNED_MODEL_FIELDS:
            allowed = ", ".join(sorted(UPDATABLE_TUNED_MODEL_FIELDS))
            problems.append(("update_mask", f"{path!r} cannot be updated (updatable: {allowed})"))
    problems += _sampling(request.tuned_model, "tuned_model.", named)
    return problems


VALIDATORS = {
    "google.ai.generativelanguage.v1beta.ModelService.CreateTunedModel": create_tuned_model,
    "google.ai.generativelanguage.v1beta.ModelService.UpdateTunedModel": update_tuned_model,
}


# --- values every request is checked for ------------------------------------------------------

# proto3 JSON's ranges (google/protobuf/duration.proto, timestamp.proto).
MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years
MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
NANOS_PER_SECOND = 1_000_000_000
# Protobuf's own nesting limit (upb's default decode depth): deeper messages do not decode.
MAX_NESTING = 100
PAGE_SIZE_FIELD = "page_size"
# A FieldMask path as proto3 JSON can spell it (lower_snake_case, `_` before a letter), or
# AIP-161's `*` (every field).
_MASK_PATH = re.compile(r"\*|[a-z0-9]*(?:_[a-z][a-z0-9]*)*(?:\.[a-z0-9]*(?:_[a-z][a-z0-9]*)*)*")

_DURATION = "google.protobuf.Duration"
_TIMESTAMP = "google.protobuf.Timestamp"
_FIELD_MASK = "google.protobuf.FieldMask"
_VALUE = "google.protobuf.Value"
_ANY = "google.protobuf.Any"
_SPECIAL = frozenset({_DURATION, _TIMESTAMP, _FIELD_MASK, _VALUE, _ANY})
_ENUM = FieldDescriptor.TYPE_ENUM
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_STRING = FieldDescriptor.TYPE_STRING


# A field path as the walk goes: (parent, segment), None at the request itself; a segment is
# a field name, a list index, or a 1-tuple holding a map key. Made into text only for a
# problem found, since nearly every request has none.
FieldPath = tuple[Any, str | int | tuple[object]] | None


def _path_text(path: FieldPath) -> str:
    """`contents[0].parts[1].inline_data`, `labels['k']`: as problems name fields."""
    segments: list[str | int | tuple[object]] = []
    while path is not None:
        path, segment = path
        segments.append(segment)
    text = ""
    for segment in reversed(segments):
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif isinstance(segment, tuple):
            text += f"[{segment[0]!r}]"
        else:
            text = f"{text}.{segment}" if text else segment
    return text


def _message_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field (the stubs allow None for other fields)."""
    descriptor = field.message_type
    assert descriptor is not None, field.full_name
    return descriptor


@cache
def _worth_walking(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold anything check_values looks at."""
    return _has_checked_fields(descriptor, set())


def _has_checked_fields(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in _SPECIAL:
        return True
    if descriptor.full_name in seen:  # a recursive type (Schema): its other fields decide
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.type == _ENUM or field.name == PAGE_SIZE_FIELD:
            return True
        if field.type == _MESSAGE and _has_checked_fields(_message_type(field), seen):
            return True
    return False


def _duration(message: Any, path: str) -> Violations:
    seconds, nanos = message.seconds, message.nanos
    if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
        return [(path, f"is out of range: a Duration is at most {MAX_DURATION_SECONDS} seconds "
                       f"(10,000 years) either way, got {seconds} seconds")]  # fmt: skip
    if not -NANOS_PER_SECOND < nanos < NANOS_PER_SECOND:
        return [(f"{path}.nanos", f"must be between -999999999 and 999999999, got {nanos}")]
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        return [(f"{path}.nanos", "must have the same sign as seconds")]
    return []


def _timestamp(message: Any, path: str) -> Violations:
    if not MIN_TIMESTAMP_SECONDS <= message.seconds <= MAX_TIMESTAMP_SECONDS:
        return [(path, "is out of range: a Timestamp is from 0001-01-01 to 9999-12-31 "
                       f"(UTC), got {message.seconds} seconds from 1970")]  # fmt: skip
    if not 0 <= message.nanos < NANOS_PER_SECOND:
        return [(f"{path}.nanos", f"must be between 0 and 999999999, got {message.nanos}")]
    return []


def _camel_case(snake: str) -> str:
    return re.sub(r"_([a-z])", lambda match: match.group(1).upper(), snake)


def _field_mask(message: Any, path: str) -> Violations:
    """Paths in JSON spelling (displayName) are rewritten in proto spelling (display_name),
    which is what they mean and what proto3 JSON can carry; any other is a violation."""
    problems: Violations = []
    for index, mask_path in enumerate(message.paths):
        if _MASK_PATH.fullmatch(mask_path):
            continue
        snake = _snake_case(mask_path)
        if _MASK_PATH.fullmatch(snake) and _camel_case(snake) == mask_path:
            message.paths[index] = snake
            continue
        problems.append(
            (f"{path}.paths[{index}]", f"{mask_path[:100]!r} is not a field path (use the "
                                       "field names, dot-separated)")
        )  # fmt: skip
    return problems


def _value(message: Any, path: str) -> Violations:
    kind = message.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(message.number_value):
        return [(path, "must be a finite number: JSON has no NaN or infinity")]
    if kind == "struct_value":
        problems: Violations = []
        for key, value in message.struct_value.fields.items():
            problems += _value(value, f"{path}[{key!r}]")
        return problems
    if kind == "list_value":
        problems = []
        for index, value in enumerate(message.list_value.values):
            problems += _value(value, f"{path}[{index}]")
        return problems
    return []


def _any(message: Any, path: str) -> Violations:
    if not message.type_url:
        return []
    type_name = message.type_url.rpartition("/")[2]
    try:
        message_class = symbol_database.Default().GetSymbol(type_name)
    except KeyError:
        return [(f"{path}.type_url", f"names a message type this gateway does not know: "
                                     f"{type_name[:100]!r}")]  # fmt: skip
    try:
        message_class.FromString(message.value)
    except Exception:  # DecodeError: the JSON form would need the message itself
        return [(f"{path}.value", f"is not a valid {type_name}")]
    return []


def _special(message: Any, path: str) -> Violations:
    name = message.DESCRIPTOR.full_name
    if name == _DURATION:
        return _duration(message, path)
    if name == _TIMESTAMP:
        return _timestamp(message, path)
    if name == _FIELD_MASK:
        return _field_mask(message, path)
    if name == _VALUE:
        return _value(message, path)
    return _any(message, path)


def _enum(field: FieldDescriptor, number: int, path: FieldPath) -> Violations:
    enum = field.enum_type
    if number == 0 or enum is None or number in enum.values_by_number:
        return []
    return [(_path_text(path), f"{number} is not a value of {enum.name}")]


# What _walk does with a set field, by kind (decided once per field, see _plan).
_ENUM_VALUE, _ENUM_LIST, _MESSAGE_VALUE, _MESSAGE_LIST, _MAP, _PAGE_SIZE = range(6)


@cache
def _plan(descriptor: Descriptor) -> dict[FieldDescriptor, int]:
    """The fields of a message type that check_values looks into, with their kind."""
    plan: dict[FieldDescriptor, int] = {}
    for field in descriptor.fields:
        if field.type == _ENUM:
            plan[field] = _ENUM_LIST if field.is_repeated else _ENUM_VALUE
        elif field.type == _MESSAGE:
            entry = _message_type(field)
            if entry.GetOptions().map_entry:
                value = entry.fields_by_name["value"]
                if value.type == _ENUM or (
                    value.type == _MESSAGE and _worth_walking(_message_type(value))
                ):
                    plan[field] = _MAP
            elif _worth_walking(entry):
                plan[field] = _MESSAGE_LIST if field.is_repeated else _MESSAGE_VALUE
        elif field.name == PAGE_SIZE_FIELD and not field.is_repeated:
            plan[field] = _PAGE_SIZE
    return plan


@cache
def _is_special(descriptor: Descriptor) -> bool:
    return descriptor.full_name in _SPECIAL


def _walk(message: Any, path: FieldPath, problems: Violations) -> None:
    _walk_fields(message.ListFields(), _plan(message.DESCRIPTOR), path, problems)


def _walk_fields(
    fields: list[tuple[FieldDescriptor, Any]],
    plan: dict[FieldDescriptor, int],
    path: FieldPath,
    problems: Violations,
) -> None:
    """Look into a message's set `fields` (its ListFields()) that its type's `plan` names."""
    for field, value in fields:
        kind = plan.get(field)
        if kind is None:
            continue
        here = (path, field.name)
        if kind == _MESSAGE_VALUE:
            _check_message(value, here, problems)
        elif kind == _MESSAGE_LIST:
            item_type = _message_type(field)
            if _is_special(item_type):
                for index, item in enumerate(value):
                    problems += _special(item, _path_text((here, index)))
                continue
            item_plan = _plan(item_type)  # one lookup for the whole list
            for index, item in enumerate(value):
                item_fields = item.ListFields()
                for item_field, _ in item_fields:
                    if item_field in item_plan:  # else nothing to look at (a text part)
                        _walk_fields(item_fields, item_plan, (here, index), problems)
                        break
        elif kind == _ENUM_VALUE:
            problems += _enum(field, value, here)
        elif kind == _ENUM_LIST:
            for index, number in enumerate(value):
                problems += _enum(field, number, (here, index))
        elif kind == _MAP:
            _walk_map(_message_type(field), value, here, problems)
        elif value < 0:  # _PAGE_SIZE
            problems.append((_path_text(here), f"must not be negative, got {value}"))


def _walk_map(entry: Descriptor, value: Any, path: FieldPath, problems: Violations) -> None:
    value_field = entry.fields_by_name["value"]
    if value_field.type == _ENUM:
        for key, number in value.items():
            problems += _enum(value_field, number, (path, (key,)))
    else:
        for key, item in value.items():
            _check_message(item, (path, (key,)), problems)


def _check_message(message: Any, path: FieldPath, problems: Violations) -> None:
    if _is_special(message.DESCRIPTOR):
        problems += _special(message, _path_text(path))
    else:
        _walk(message, path, problems)


def check_values(request: Message) -> Violations:
    """Values of `request` its type allows but the API cannot take, each with its field path
    (see the module docstring); empty when there are none."""
    problems: Violations = []
    if _worth_walking(request.DESCRIPTOR):
        _check_message(request, None, problems)
    return problems


# --- decoding ---------------------------------------------------------------------------------


class _Truncated(Exception):
    """The wire data ends inside a tag, a varint or a field."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Truncated
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class _BadGroup(Exception):
    """A group whose end tag is missing or mismatched."""


def _skip_group(data: bytes, pos: int, number: int) -> int:
    """The position after the group of field `number` that starts at `pos`."""
    while True:
        tag, pos = _varint(data, pos)
        wire_type = tag & 7
        if wire_type == 4:
            if tag >> 3 != number:
                raise _BadGroup
            return pos
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire_type == 3:
            pos = _skip_group(data, pos, tag >> 3)
        else:
            raise _BadGroup
        if pos > len(data):
            raise _Truncated


def _map_key(entry: Descriptor, data: bytes) -> str | None:
    """The key of a map entry, when it is a string key that decodes."""
    key_field = entry.fields_by_number.get(1)
    if key_field is None or key_field.type != _STRING or not data or data[0] != 0x0A:
        return None
    try:
        length, pos = _varint(data, 1)
        return data[pos : pos + length].decode()
    except (_Truncated, UnicodeDecodeError):
        return None


def _wire_problem(
    descriptor: Descriptor, data: bytes, path: list[str], depth: int
) -> tuple[list[str], str] | None:
    """The first problem in `data` as a `descriptor` message: (field path, description)."""
    if depth > MAX_NESTING:
        return path, f"nests messages more than {MAX_NESTING} levels deep"
    pos = 0
    counts: dict[int, int] = {}
    while pos < len(data):
        try:
            tag, pos = _varint(data, pos)
        except _Truncated:
            return path, "ends inside a field tag"
        number, wire_type = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        here = path
        if field is not None:
            index = counts.get(number, 0)
            counts[number] = index + 1
            entry = field.message_type if field.type == _MESSAGE else None
            is_map = entry is not None and entry.GetOptions().map_entry
            name = field.name if not field.is_repeated or is_map else f"{field.name}[{index}]"
            here = [*path, name]
        if number == 0:
            return here, "uses field number 0, which protobuf does not allow"
        try:
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                if pos + length > len(data):
                    return here, "is cut short: its length runs past the end of the message"
                chunk = data[pos : pos + length]
                pos += length
                problem = _field_problem(field, chunk, here, depth)
                if problem is not None:
                    return problem
            elif wire_type == 3:  # a group: unknown to these APIs, kept as protobuf keeps it
                pos = _skip_group(data, pos, number)
            else:  # 4 outside a group; 6 and 7 do not exist
                return here, f"uses wire type {wire_type}, which is not valid here"
        except _Truncated:
            return here, "is cut short: the message ends inside it"
        except _BadGroup:
            return here, "holds a group that does not end where it should"
        if pos > len(data):
            return here, "is cut short: the message ends inside it"
    return None


def _field_problem(
    field: FieldDescriptor | None, chunk: bytes, path: list[str], depth: int
) -> tuple[list[str], str] | None:
    if field is None:
        return None  # an unknown field: protobuf keeps it, and so may we
    if field.type == _STRING:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            return path, "is not valid UTF-8 (a string field must be)"
    elif field.type == _MESSAGE:
        entry = _message_type(field)
        if entry.GetOptions().map_entry:
            key = _map_key(entry, chunk)
            if key is not None:
                path = [*path[:-1], f"{path[-1]}[{key[:40]!r}]"]
        return _wire_problem(entry, chunk, path, depth + 1)
    return None


def _shown_path(path: list[str]) -> str:
    """A field path fit for a message: the first levels of a deep one, then an ellipsis."""
    shown = ".".join(path[:8])
    return shown + ".…" if len(path) > 8 else shown


def undecodable(descriptor: Descriptor, data: bytes) -> errors.UpstreamError:
    """INVALID_ARGUMENT for bytes that do not decode as a `descriptor` message, naming the
    field at fault when one can be found."""
    what = f"the request is not a valid {descriptor.full_name}"
    try:
        problem = _wire_problem(descriptor, data, [], 1)
    except RecursionError:  # cannot happen below MAX_NESTING; never fail while explaining
        problem = None
    if problem is None:
        return errors.invalid_argument(f"{what}: its bytes do not decode as protobuf")
    path, description = problem
    return errors.bad_request([(_shown_path(path) or "(request)", f"{description} ({what})")])


def decode_message(message_class: Any, data: bytes) -> Message:
    """The `message_class` message of `data`; INVALID_ARGUMENT (UpstreamError) naming the
    problem when the bytes do not decode."""
    try:
        message: Message = message_class.FromString(data)
    except Exception:  # DecodeError, with upb's text (no field); explained below
        raise undecodable(message_class.DESCRIPTOR, data) from None
    return message


def decode_request(message_class: Any, data: bytes) -> Message:
    """decode_message, then check_values: INVALID_ARGUMENT for a value out of the API's
    range too."""
    message = decode_message(message_class, data)
    violations = check_values(message)
    if violations:
        raise errors.bad_request(violations)
    return message


# --- handlers that decode their own requests --------------------------------------------------

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]
Decoder = Callable[[bytes], Message]


def decoding_handler(behaviour: Behaviour, decode: Decoder) -> Behaviour:
    """`behaviour` (a coroutine function, or an async generator function for a stream,
    taking the decoded request) as one taking the request's bytes, for a handler registered
    without a request deserializer: `decode` (e.g. decode_request bound to the message
    class) raises UpstreamError for bad bytes, which ends the call with its status."""
    if inspect.isasyncgenfunction(behaviour):

        async def decoding_stream(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = decode(data)
            except errors.UpstreamError as exc:
                await exc.abort(context)
                return
            async for response in behaviour(request, context):
                yield response

        return decoding_stream

    async def decoding_call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(data)
        except errors.UpstreamError as exc:
            await exc.abort(context)
            return None
        return await behaviour(request, context)

    return decoding_call


def _decoded_stream(
    messages: AsyncIterable[bytes], message_class: Any, context: grpc.aio.ServicerContext
) -> AsyncIterator[Message]:
    async def decoded() -> AsyncIterator[Message]:
        async for data in messages:
            try:
                yield decode_request(message_class, data)
            except errors.UpstreamError as exc:
                await exc.abort(context)

    return decoded()


def _stream_request_handler(behaviour: Behaviour, message_class: Any) -> Behaviour:
    """A client-streaming behaviour (reflection) fed decoded messages."""
    if inspect.isasyncgenfunction(behaviour):

        async def streaming(messages: Any, context: grpc.aio.ServicerContext) -> Any:
            async for response in behaviour(
                _decoded_stream(messages, message_class, context), context
            ):
                yield response

        return streaming

    async def unary(messages: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(_decoded_stream(messages, message_class, context), context)

    return unary


def _message_class(deserializer: Any) -> Any:
    """The message class of a `SomeMessage.FromString` deserializer, or None."""
    owner = getattr(deserializer, "__self__", None)
    return owner if isinstance(owner, type) and issubclass(owner, Message) else None


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Decodes each request in the handler instead of in gRPC (see the module docstring).

    Handlers without a request deserializer (the forwarder's, the operations') decode
    their own and are left alone; so is a deserializer that is not `Message.FromString`.
    Place it after the MetricsInterceptor, so that the metrics see the status a bad request
    gets.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        message_class = _message_class(handler.request_deserializer)
        if message_class is None:
            return handler
        decode = partial(decode_request, message_class)
        if handler.unary_unary is not None:
            behaviour = decoding_handler(handler.unary_unary, decode)
            return handler._replace(request_deserializer=None, unary_unary=behaviour)
        if handler.unary_stream is not None:
            behaviour = decoding_handler(handler.unary_stream, decode)
            return handler._replace(request_deserializer=None, unary_stream=behaviour)
        if handler.stream_stream is not None:
            behaviour = _stream_request_handler(handler.stream_stream, message_class)
            return handler._replace(request_deserializer=None, stream_stream=behaviour)
        if handler.stream_unary is not None:
            behaviour = _stream_request_handler(handler.stream_unary, message_class)
            return handler._replace(request_deserializer=None, stream_unary=behaviour)
        return handler
