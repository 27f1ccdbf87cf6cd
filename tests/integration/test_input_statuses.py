"""Exact statuses for bad input: undecodable bytes, deep nesting, out-of-range values and
requests that fit no route are INVALID_ARGUMENT naming the problem (never UNKNOWN, never a
Python class name), counted in the metrics as the client saw them; a gateway bug is
INTERNAL with a fixed message."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    model_service_pb2,
    safety_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.routes import UnroutableRequest
from gemini_gateway.server.store.logs import LogQueryError
from gemini_gateway.server.validation import MAX_NESTING, check_values

V1BETA = "/google.ai.generativelanguage.v1beta"
GENERATE = f"{V1BETA}.GenerativeService/GenerateContent"
STREAM = f"{V1BETA}.GenerativeService/StreamGenerateContent"
LIST_TUNED = f"{V1BETA}.ModelService/ListTunedModels"
WAIT = "/google.longrunning.Operations/WaitOperation"
WATCH = "/gemini.gateway.v1.OperationWatchService/WatchOperation"
QUERY_USAGE = "/gemini.gateway.v1.UsageService/QueryUsage"
HEALTH = "/grpc.health.v1.Health/Check"
# What a Python exception's name or repr looks like in a message.
PYTHON_NAMES = re.compile(r"<class|Error\b|Exception\b|Traceback|RecursionError|DecodeError")


@pytest.fixture(scope="module")
async def gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    store = tmp_path_factory.mktemp("input-statuses") / "gw.db"
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=f"sqlite+aiosqlite:///{store}",
        )
    )
    yield gw
    await gw.stop(0)


def _count(method: str, code: str) -> float:
    return (
        REGISTRY.get_sample_value("gateway_grpc_calls_total", {"method": method, "code": code})
        or 0.0
    )


async def _counted(method: str, code: str, expected: float) -> float:
    for _ in range(300):  # the status reaches the client a moment before the metric
        if _count(method, code) >= expected:
            break
        await asyncio.sleep(0.01)
    return _count(method, code)


async def _fail(
    channel: grpc.aio.Channel, method: str, data: bytes, streaming: bool = False
) -> grpc.aio.AioRpcError:
    """Send raw request bytes; the error the call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if streaming:
            async for _ in channel.unary_stream(method)(data, timeout=10):
                pass
        else:
            await channel.unary_unary(method)(data, timeout=10)
    return info.value


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return [(v.field, v.description) for v in bad.field_violations]
    return []


def _invalid(error: grpc.aio.AioRpcError) -> str:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    message = error.details() or ""
    assert not PYTHON_NAMES.search(message), message
    return message


def _len(data: bytes) -> bytes:
    size, out = len(data), bytearray()
    while True:
        low, size = size & 0x7F, size >> 7
        out.append(low | (0x80 if size else 0))
        if not size:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return bytes([(number << 3) | 2]) + _len(data) + data


# --- undecodable bytes ------------------------------------------------------------------------


async def test_undecodable_bytes_are_invalid_argument_naming_the_field(channel) -> None:
    before = _count(GENERATE, "INVALID_ARGUMENT")
    error = await _fail(channel, GENERATE, b"\x0a\x09models/\xff\xfe")
    message = _invalid(error)
    assert "UTF-8" in message and "GenerateContentRequest" in message
    (violation,) = _violations(error)
    assert violation[0] == "model"
    # Counted with the status the client saw (the request never reached a servicer).
    assert await _counted(GENERATE, "INVALID_ARGUMENT", before + 1) == before + 1
    assert _count(GENERATE, "UNKNOWN") == 0


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        (b"\x0a\x20abc", "model", "runs past the end"),
        (b"\xff", "(request)", "ends inside a field tag"),
        (b"\x0a\x08models/x\x12\x05\x0a\x03\x12\x01\xff", "contents[0].parts[0].text", "UTF-8"),
        (b"\x0f", "model", "wire type 7"),
    ],
)
async def test_the_problem_in_the_bytes_is_named(channel, data, field, problem) -> None:
    error = await _fail(channel, STREAM, data, streaming=True)
    _invalid(error)
    ((named, description),) = _violations(error)
    assert named == field and problem in description


async def test_every_service_decodes_its_own_requests(channel) -> None:
    """The gateway's own services, the operations it serves itself, and health: all answer
    bad bytes INVALID_ARGUMENT, and the metrics count them so."""
    for method, streaming in ((QUERY_USAGE, False), (WAIT, False), (WATCH, True), (HEALTH, False)):
        before = _count(method, "INVALID_ARGUMENT")
        _invalid(await _fail(channel, method, b"\x0a\x02\xff\xfe", streaming))
        assert await _counted(method, "INVALID_ARGUMENT", before + 1) == before + 1, method


# --- nesting ----------------------------------------------------------------------------------


def _nested_args(levels: int) -> bytes:
    """GenerateContentRequest bytes with a Struct nested `levels` Values deep in a function
    call's args (built as bytes: protobuf itself would refuse to build it)."""
    value = _field(3, b"x")  # Value.string_value
    for _ in range(levels):
        entry = _field(1, b"a") + _field(2, value)  # Struct.fields entry: key, value
        value = _field(5, _field(1, entry))  # Value.struct_value
    args = _field(1, _field(1, b"a") + _field(2, value))  # Struct with one entry
    call = _field(1, b"f") + _field(2, args)  # FunctionCall name, args
    part = _field(4, call)  # Part.function_call
    content = _field(1, part) + _field(2, b"user")  # Content parts, role
    return _field(1, b"models/gemini-2.5-flash") + _field(2, content)


def _nested_schema(levels: int) -> bytes:
    """A tool whose parameter Schema nests `items` `levels` deep."""
    schema = bytes([0x08, 0x01])  # Schema.type = STRING
    items = content_pb2.Schema.DESCRIPTOR.fields_by_name["items"].number
    for _ in range(levels):
        schema = bytes([0x08, 0x05]) + _field(items, schema)  # type = ARRAY
    declaration = _field(1, b"f") + _field(3, schema)  # FunctionDeclaration name, parameters
    tools = generative_service_pb2.GenerateContentRequest.DESCRIPTOR.fields_by_name["tools"]
    return _field(1, b"models/gemini-2.5-flash") + _field(tools.number, _field(1, declaration))


@pytest.mark.parametrize("build", [_nested_args, _nested_schema])
async def test_deep_nesting_is_invalid_argument_without_recursion(channel, build) -> None:
    error = await _fail(channel, GENERATE, build(150))
    message = _invalid(error)
    assert f"more than {MAX_NESTING} levels" in message


async def test_nesting_within_the_limit_is_served(channel) -> None:
    request = generative_service_pb2.GenerateContentRequest.FromString(_nested_args(30))
    assert request.contents[0].parts[0].function_call.args.fields["a"].HasField("struct_value")
    try:
        await channel.unary_unary(GENERATE)(_nested_args(30), timeout=10)
    except grpc.aio.AioRpcError as exc:  # the emulator may refuse a call without text
        assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), exc


# --- out-of-range values ----------------------------------------------------------------------


async def test_wait_operation_timeout_beyond_a_duration(channel) -> None:
    request = operations_pb2.WaitOperationRequest(name="tunedModels/x/operations/y")
    request.timeout.seconds = 2**62
    error = await _fail(channel, WAIT, request.SerializeToString())
    _invalid(error)
    ((field, description),) = _violations(error)
    assert field == "timeout" and "out of range" in description
    request.timeout.seconds = -5
    error = await _fail(channel, WAIT, request.SerializeToString())
    assert _violations(error) == [("timeout", "must not be negative")]


async def test_watch_poll_interval_out_of_range(channel) -> None:
    request = watch_pb2.WatchOperationRequest(
        name="tunedModels/x/operations/y", poll_interval=duration_pb2.Duration(seconds=-(2**62))
    )
    error = await _fail(channel, WATCH, request.SerializeToString(), streaming=True)
    assert [field for field, _ in _violations(error)] == ["poll_interval"]


async def test_forwarded_values_out_of_range_name_their_fields(channel) -> None:
    request = generative_service_pb2.GenerateContentRequest(model="models/gemini-2.5-flash")
    part = request.contents.add(role="user").parts.add(text="hi")
    part.video_metadata.start_offset.seconds = 2**62
    part.video_metadata.end_offset.seconds, part.video_metadata.end_offset.nanos = 1, -1
    request.safety_settings.add(category=999, threshold=safety_pb2.SafetySetting.BLOCK_NONE)
    request.contents[0].parts.add().function_call.args.fields["x"].number_value = float("nan")
    error = await _fail(channel, GENERATE, request.SerializeToString())
    _invalid(error)
    assert [field for field, _ in _violations(error)] == [
        "contents[0].parts[0].video_metadata.start_offset",
        "contents[0].parts[0].video_metadata.end_offset.nanos",
        "contents[0].parts[1].function_call.args.fields['x']",
        "safety_settings[0].category",
    ]


async def test_an_any_that_cannot_be_written_as_json_is_named(channel) -> None:
    request = generative_service_pb2.BatchGenerateContentRequest()
    request.batch.model = "models/gemini-2.5-flash"
    response = request.batch.output.inlined_responses.inlined_responses.add()
    known = response.error.details.add(type_url="type.googleapis.com/google.rpc.BadRequest")
    known.value = b"\xff\xff"
    response.error.details.add(type_url="type.googleapis.com/no.such.Type")
    error = await _fail(
        channel, f"{V1BETA}.GenerativeService/BatchGenerateContent", request.SerializeToString()
    )
    prefix = "batch.output.inlined_responses.inlined_responses[0].error"
    assert [field for field, _ in _violations(error)] == [
        f"{prefix}.details[0].value",
        f"{prefix}.details[1].type_url",
    ]


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        (LIST_TUNED, model_service_pb2.ListTunedModelsRequest(page_size=-1)),
        (f"{V1BETA}.ModelService/ListModels", model_service_pb2.ListModelsRequest(page_size=-7)),
        (
            "/google.longrunning.Operations/ListOperations",
            operations_pb2.ListOperationsRequest(name="batches", page_size=-1),
        ),
    ],
)
async def test_negative_page_sizes(channel, method, request_message) -> None:
    error = await _fail(channel, method, request_message.SerializeToString())
    assert [field for field, _ in _violations(error)] == ["page_size"]


async def test_masks_in_json_spelling_are_taken_and_others_named(channel, emulator) -> None:
    update = model_service_pb2.UpdateTunedModelRequest()
    update.tuned_model.name = "tunedModels/no-such-model"
    update.update_mask.paths.extend(["displayName"])
    # Rewritten to display_name: the upstream is asked (and has no such model).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"{V1BETA}.ModelService/UpdateTunedModel")(
            update.SerializeToString(), timeout=10
        )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    update.update_mask.paths[:] = ["Display__Name"]
    error = await _fail(
        channel, f"{V1BETA}.ModelService/UpdateTunedModel", update.SerializeToString()
    )
    assert "update_mask.paths[0]" in [field for field, _ in _violations(error)]


async def test_a_request_that_fits_no_route_names_the_field(channel) -> None:
    request = generative_service_pb2.GenerateContentRequest(model="gemini-2.5-flash")
    request.contents.add(role="user").parts.add(text="hi")
    error = await _fail(channel, GENERATE, request.SerializeToString())
    message = _invalid(error)
    assert "models/*" in message
    assert [field for field, _ in _violations(error)] == ["model"]


async def test_no_upstream_request_for_a_refused_call(channel, emulator, http) -> None:
    marker = "refused-marker-model"
    request = generative_service_pb2.GenerateContentRequest(model=f"models/{marker}")
    request.safety_settings.add(category=12345)
    await _fail(channel, GENERATE, request.SerializeToString())
    async with http.get(f"{emulator.url}/_emulator/requests") as response:
        seen = await response.json()
    assert not [entry for entry in seen if marker in entry["path"]]


# --- the mapping itself -----------------------------------------------------------------------


def test_known_exceptions_map_explicitly_and_others_are_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unroutable = errors.as_upstream_error(UnroutableRequest("no binding", field="model"))
    assert (unroutable.code, unroutable.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "model: no binding",
    )
    query = errors.as_upstream_error(LogQueryError("say which logs to delete"))
    assert query.code is grpc.StatusCode.INVALID_ARGUMENT
    assert query.message == "say which logs to delete"
    bug = errors.as_upstream_error(KeyError("secret-ish detail"))
    assert (bug.code, bug.message) == (grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE)
    assert "KeyError" in caplog.text  # the log has the details; the caller does not
    plain = errors.as_upstream_error(ValueError("a plain ValueError is no caller error"))
    assert plain.code is grpc.StatusCode.INTERNAL
    caplog.clear()
    # What meters and recorders read: the same status, nothing logged.
    quiet = errors.client_status(KeyError("x"))
    assert (quiet.code, quiet.message) == (grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE)
    assert errors.client_status(LogQueryError("bad")).code is grpc.StatusCode.INVALID_ARGUMENT
    assert not caplog.records


def test_check_values_walks_only_what_it_needs() -> None:
    request = generative_service_pb2.GenerateContentRequest(model="models/m")
    request.contents.add(role="user").parts.add(text="hello")
    assert check_values(request) == []
    value = struct_pb2.Value()
    value.list_value.values.add().number_value = float("inf")
    request.contents[0].parts.add().function_response.response.fields["r"].CopyFrom(value)
    assert check_values(request) == [
        (
            "contents[0].parts[1].function_response.response.fields['r'][0]",
            "must be a finite number: JSON has no NaN or infinity",
        )
    ]


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
