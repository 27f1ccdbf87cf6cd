"""The HTTP face over a real gateway (two projects with caller tokens, logging on, SQLite),
the emulator, and real HTTP on loopback with aiohttp's client.

Every gemini.gateway.v1 method with an http rule answers (the list comes from the
descriptors, so a new RPC that the face cannot reach fails here); errors keep their gRPC
meaning as HTTP statuses; a project cannot read another's data; streams are server-sent
events. A service that exists only in the tests (tests/unit/test_http_face_routes.py) is
served with no code of its own, as adding an RPC to a .proto must be.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server import http_face
from gemini_gateway.server.app import (
    FORWARDED_SERVICES,
    LOCAL_SERVICES,
    SERVICE_CONFIG,
    Gateway,
    start_gateway,
)
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.http_face import (
    HttpFaceHandle,
    InboundRouteTable,
    build_http_face,
    face_of,
    start_http_face,
)
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.routes import RouteTableError, load_service_config_rules
from tests.unit.test_http_face_routes import (
    ECHO_SERVICE,
    echo_class,
    echo_service,
    http_rule,
    service_with_rules,
)

MODEL = "models/gemini-2.5-flash"
BASE_MODEL = "models/gemini-1.5-flash-001-tuning"
ALPHA, BETA = "alpha-face-token", "beta-face-token"
AS_ALPHA = {"Authorization": f"Bearer {ALPHA}"}
AS_BETA = {"Authorization": f"Bearer {BETA}"}
Event = tuple[str, Any]  # (event type, parsed data)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def tuning_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings(tuning_seconds=0.2))
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def gateway(
    tuning_emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    settings = Settings(
        upstream="emulator",
        upstream_url=tuning_emulator.url,
        port=0,
        store_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('face')}/gw.db",
        logging_enabled=True,
        projects={
            "alpha": ProjectConfig(
                callers=[CallerConfig(name="alice", token_sha256=token_sha256(ALPHA))]
            ),
            "beta": ProjectConfig(
                callers=[CallerConfig(name="bob", token_sha256=token_sha256(BETA))]
            ),
        },
    )
    gw = await start_gateway(settings)
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def face(gateway: Gateway) -> AsyncIterator[HttpFaceHandle]:
    handle = await start_http_face(build_http_face(LOCAL_SERVICES, gateway.target), "127.0.0.1", 0)
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def http(face: HttpFaceHandle) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=face.url) as session:
        yield session


@pytest.fixture(scope="module")
async def generative(
    gateway: Gateway,
) -> AsyncIterator[generative_service_pb2_grpc.GenerativeServiceStub]:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield generative_service_pb2_grpc.GenerativeServiceStub(channel)


async def logged_calls(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    run: str,
    count: int,
    token: str = ALPHA,
) -> None:
    for number in range(count):
        await generative.GenerateContent(
            text_request(MODEL, f"Question {number} of {run}", {"run": run}),
            metadata=bearer(token),
        )
    await gateway.recorder.flush()


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The events of a text/event-stream answer, as a browser's EventSource reads them."""
    kind, data = "message", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)


async def all_events(response: aiohttp.ClientResponse) -> list[Event]:
    return [event async for event in sse_events(response)]


def violations(body: dict[str, Any]) -> dict[str, str]:
    """The field violations of the error's google.rpc.BadRequest."""
    (detail,) = [d for d in body["error"]["details"] if d["@type"].endswith("BadRequest")]
    return {v["field"]: v["description"] for v in detail["fieldViolations"]}


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


# --- every method --------------------------------------------------------------------------------


class Calls:
    """HTTP calls as alpha, each counted against the method the face routes it to."""

    def __init__(self, http: aiohttp.ClientSession, table: InboundRouteTable) -> None:
        self.http = http
        self.table = table
        self.answered: set[str] = set()

    def _count(self, verb: str, path: str) -> None:
        route, _ = self.table.match(verb, quote(path, safe="/:-_.~"))
        self.answered.add(route.full_method)

    async def json(self, verb: str, path: str, body: Any = None, **params: str) -> Any:
        async with self.http.request(
            verb, path, json=body, params=params or None, headers=AS_ALPHA
        ) as response:
            answer = await response.json()
            assert response.status == 200, (verb, path, answer)
            assert response.content_type == "application/json"
        self._count(verb, path)
        return answer

    async def events(self, path: str, **params: str) -> list[Event]:
        async with self.http.get(path, params=params or None, headers=AS_ALPHA) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "text/event-stream"
            events = await asyncio.wait_for(all_events(response), 20)
        self._count("GET", path)
        assert events[-1] == ("end", {}), events[-1]
        return events[:-1]


async def tail_one_log(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    run: str,
) -> dict[str, Any]:
    """Open TailLogs over SSE, make a call while it runs, and return the log it sends."""
    params = {"filter": f'labels.run = "{run}"'}
    async with http.get("/v1/projects/-/logs:tail", params=params, headers=AS_ALPHA) as response:
        # The face answers once the tail is under way: every log from here on is sent.
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        await logged_calls(gateway, generative, run, 1)
        kind, data = await asyncio.wait_for(anext(sse_events(response)), 10)
    assert kind == "message"
    return data


async def test_every_method_with_an_http_rule_answers(
    face: HttpFaceHandle,
    http: aiohttp.ClientSession,
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    table = InboundRouteTable.from_services(LOCAL_SERVICES)
    calls = Calls(http, table)
    await logged_calls(gateway, generative, "every-method", 2)

    # LogService
    listed = await calls.json(
        "GET", "/v1/projects/alpha/logs", filter='labels.run = "every-method"', pageSize="10"
    )
    names = [log["name"] for log in listed["logs"]]
    assert len(names) == 2
    log = await calls.json("GET", f"/v1/{names[0]}")
    assert log["request"]["contents"][0]["parts"][0]["text"].startswith("Question")
    settings = await calls.json("GET", "/v1/projects/alpha/loggingSettings")
    assert settings["enabled"] is True
    updated = await calls.json(
        "PATCH", "/v1/projects/alpha/loggingSettings", {"maxLogs": 900}, updateMask="maxLogs"
    )
    assert updated["maxLogs"] == 900
    tailed = await tail_one_log(http, gateway, generative, "every-method-tail")
    calls._count("GET", "/v1/projects/-/logs:tail")
    assert tailed["log"]["labels"]["run"] == "every-method-tail"

    # DatasetService
    dataset = await calls.json(
        "POST",
        "/v1/projects/alpha/datasets",
        {"dataset": {"displayName": "Every method"}, "logNames": names[:1]},
    )
    assert dataset["logCount"] == "1"  # int64 as a string
    name = dataset["name"]
    assert (await calls.json("GET", f"/v1/{name}"))["displayName"] == "Every method"
    assert name in [
        d["name"] for d in (await calls.json("GET", "/v1/projects/alpha/datasets"))["datasets"]
    ]
    described = await calls.json(
        "PATCH", f"/v1/{name}", {"description": "d"}, updateMask="description"
    )
    assert described["description"] == "d"
    assert (await calls.json("POST", f"/v1/{name}:addLogs", {"logNames": names}))[
        "addedCount"
    ] == "1"
    assert (await calls.json("POST", f"/v1/{name}:removeLogs", {"logNames": names[1:]}))[
        "removedCount"
    ] == "1"
    exported = await calls.events(f"/v1/{name}:export", format="EXPORT_FORMAT_JSONL")
    assert exported[0][1]["fileName"].endswith(".jsonl")
    text = b"".join(base64.b64decode(data.get("data", "")) for _, data in exported).decode()
    assert [json.loads(line)["name"] for line in text.splitlines()] == names[:1]
    operation = await calls.json(
        "POST",
        f"/v1/{name}:createTunedModel",
        {"tunedModel": {"baseModel": BASE_MODEL, "displayName": "From the face"}},
    )
    watched = await calls.events(f"/v1/{operation['name']}:watch", pollInterval="0.1s")
    assert watched[-1][1]["operation"]["done"] is True
    doomed = await calls.json(
        "POST",
        "/v1/projects/-/datasets",
        {"dataset": {"displayName": "Doomed"}, "datasetId": "doomed"},
    )
    assert await calls.json("DELETE", f"/v1/{doomed['name']}") == {}  # google.protobuf.Empty

    # RunService
    rerun = await calls.json("POST", f"/v1/{name}:rerun", {"model": "models/gemini-2.5-pro"})
    run = await calls.json("GET", f"/v1/{rerun['name']}")
    assert run["model"] == "models/gemini-2.5-pro"
    runs = await calls.json("GET", f"/v1/{name}/runs")
    assert [r["name"] for r in runs["runs"]] == [rerun["name"]]

    # UsageService
    usage = await calls.json("POST", "/v1/projects/alpha:queryUsage", {"groupBy": ["labels.run"]})
    assert int(usage["totals"]["requestCount"]) >= 3
    keys = await calls.json("GET", "/v1/projects/alpha/labelKeys")
    assert "run" in [k["key"] for k in keys["labelKeys"]]
    values = await calls.json("GET", "/v1/projects/alpha/labelKeys/run/values", prefix="every")
    assert {v["value"] for v in values["labelValues"]} == {"every-method", "every-method-tail"}

    # LogService again, last: deleting logs.
    deleted = await calls.json("POST", "/v1/projects/alpha/logs:batchDelete", {"names": names[1:]})
    assert deleted["deletedCount"] == "1"

    missing = table.full_methods - calls.answered
    assert not missing, f"methods with an http rule the test did not reach: {sorted(missing)}"
    await wait_until(lambda: not gateway.runs._tasks)  # the re-run ends before the store closes


# --- errors ------------------------------------------------------------------------------------


async def _error(
    http: aiohttp.ClientSession,
    verb: str,
    path: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with http.request(verb, path, headers=headers, **kwargs) as response:
        body = await response.json()
    assert response.content_type == "application/json"
    assert set(body) == {"error"}
    assert body["error"]["code"] == response.status
    return response, body


async def test_grpc_errors_keep_their_meaning(http: aiohttp.ClientSession) -> None:
    # INVALID_ARGUMENT from the servicer, with its BadRequest.
    response, body = await _error(
        http, "POST", "/v1/projects/alpha/datasets", AS_ALPHA, json={"dataset": {}}
    )
    assert (response.status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert "dataset.display_name" in violations(body)
    # NOT_FOUND
    response, body = await _error(http, "GET", "/v1/projects/alpha/datasets/nope", AS_ALPHA)
    assert (response.status, body["error"]["status"]) == (404, "NOT_FOUND")
    assert "nope" in body["error"]["message"]
    # UNAUTHENTICATED: no token, an unknown token, a token of another scheme.
    for headers in ({}, {"Authorization": "Bearer nobody"}, {"Authorization": "Basic YTpi"}):
        response, body = await _error(http, "GET", "/v1/projects/-/datasets", headers)
        assert (response.status, body["error"]["status"]) == (401, "UNAUTHENTICATED")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # PERMISSION_DENIED
    response, body = await _error(http, "GET", "/v1/projects/alpha/datasets", AS_BETA)
    assert (response.status, body["error"]["status"]) == (403, "PERMISSION_DENIED")


async def test_routing_errors(http: aiohttp.ClientSession) -> None:
    response, body = await _error(http, "GET", "/v1/nothing/here", AS_ALPHA)
    assert (response.status, body["error"]["status"]) == (404, "NOT_FOUND")
    assert body["error"]["message"] == "no method is bound to GET /v1/nothing/here"
    response, body = await _error(http, "PUT", "/v1/projects/alpha/datasets", AS_ALPHA)
    assert (response.status, body["error"]["status"]) == (405, "UNIMPLEMENTED")
    assert response.headers["Allow"] == "GET, POST"
    response, body = await _error(
        http, "POST", "/v1/projects/alpha:queryUsage", AS_ALPHA, data=b"{not json"
    )
    assert (response.status, body["error"]["message"]) == (400, "the request body is not JSON")


async def test_query_parameters(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    await logged_calls(gateway, generative, "query-params", 3)
    text_filter = 'labels.run = "query-params" AND model = "models/gemini-2.5-flash"'
    pages = []
    for size_name in ("pageSize", "page_size"):
        async with http.get(
            "/v1/projects/alpha/logs",
            params={"filter": text_filter, size_name: "2"},
            headers=AS_ALPHA,
        ) as response:
            assert response.status == 200
            pages.append(await response.json())
    assert pages[0] == pages[1]
    assert len(pages[0]["logs"]) == 2 and pages[0]["nextPageToken"]
    # The filter with its spaces and quotes, encoded by hand with '+' for spaces.
    raw = "/v1/projects/alpha/logs?filter=" + quote(text_filter, safe="").replace("%20", "+")
    async with http.get(raw, headers=AS_ALPHA) as response:
        assert len((await response.json())["logs"]) == 3
    async with http.get(
        "/v1/projects/alpha/logs?view=LOG_VIEW_FULL&pageSize=1", headers=AS_ALPHA
    ) as response:
        assert "request" in (await response.json())["logs"][0]  # the enum, by name
    # Bad values: 400 naming each parameter; the gRPC call is not made.
    response, body = await _error(
        http,
        "GET",
        "/v1/projects/alpha/logs?pageSize=ten&view=SOME&colour=red",
        AS_ALPHA,
    )
    assert response.status == 400
    assert set(violations(body)) == {"pageSize", "view", "colour"}
    assert violations(body)["pageSize"] == "'ten' is not a 32-bit integer"
    # A value the servicer refuses: its own BadRequest names its field.
    response, body = await _error(
        http, "GET", "/v1/projects/alpha/logs", AS_ALPHA, params={"filter": "model = "}
    )
    assert (response.status, list(violations(body))) == (400, ["filter"])


# --- projects ----------------------------------------------------------------------------------


async def test_a_project_cannot_read_another_projects_data(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    await logged_calls(gateway, generative, "alpha-secret", 1)
    await logged_calls(gateway, generative, "beta-own", 1, token=BETA)
    async with http.get(
        "/v1/projects/alpha/logs",
        params={"filter": 'labels.run = "alpha-secret"'},
        headers=AS_ALPHA,
    ) as response:
        (secret_log,) = (await response.json())["logs"]
    async with http.post(
        "/v1/projects/alpha/datasets",
        json={"dataset": {"displayName": "Secret"}, "logNames": [secret_log["name"]]},
        headers=AS_ALPHA,
    ) as response:
        secret = await response.json()
    dataset_id = secret["name"].rsplit("/", 1)[1]

    # Beta's own listing holds only beta's logs.
    async with http.get("/v1/projects/-/logs", headers=AS_BETA) as response:
        own = await response.json()
    assert own["logs"] and {log["name"].split("/")[1] for log in own["logs"]} == {"beta"}

    denied = [
        ("GET", "/v1/projects/alpha/logs"),
        ("GET", f"/v1/{secret_log['name']}"),
        ("GET", "/v1/projects/alpha/loggingSettings"),
        ("GET", f"/v1/{secret['name']}"),
        ("GET", f"/v1/{secret['name']}:export?format=EXPORT_FORMAT_CSV"),  # a stream: plain 403
        ("GET", "/v1/projects/alpha/logs:tail"),
        ("GET", "/v1/projects/alpha/labelKeys"),
        ("POST", "/v1/projects/alpha:queryUsage"),
        ("POST", "/v1/projects/alpha/logs:batchDelete"),
        ("DELETE", f"/v1/{secret['name']}"),
    ]
    for verb, path in denied:
        response, body = await _error(http, verb, path, AS_BETA)
        assert (response.status, body["error"]["status"]) == (403, "PERMISSION_DENIED"), path
    # The same dataset id in beta's own project is simply not there.
    response, body = await _error(http, "GET", f"/v1/projects/beta/datasets/{dataset_id}", AS_BETA)
    assert response.status == 404
    async with http.get(f"/v1/{secret['name']}", headers=AS_ALPHA) as response:
        assert response.status == 200  # still there, untouched


# --- streams -----------------------------------------------------------------------------------


async def test_tail_logs_sends_a_call_made_during_the_stream_and_stops_with_the_client(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    data = await tail_one_log(http, gateway, generative, "tailed")
    log = data["log"]
    assert log["name"].startswith("projects/alpha/logs/")
    assert (log["model"], log["labels"]["run"]) == (MODEL, "tailed")
    assert "request" not in log  # BASIC view
    # The client left: the face cancelled the gRPC call, and the tail ended.
    await wait_until(lambda: gateway.log_bus.subscriber_count("alpha") == 0)


async def test_a_stream_refused_at_once_answers_its_http_status(
    http: aiohttp.ClientSession,
) -> None:
    response, body = await _error(
        http, "GET", "/v1/projects/alpha/logs:tail", AS_ALPHA, params={"filter": "((("}
    )
    assert (response.status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
    response, body = await _error(
        http, "GET", "/v1/projects/alpha/datasets/none:export?format=EXPORT_FORMAT_CSV", AS_ALPHA
    )
    assert response.status == 404


async def test_the_request_id_crosses_the_face_both_ways(http: aiohttp.ClientSession) -> None:
    """A caller's X-Request-Id reaches the gRPC call (whose request id it becomes) and comes
    back on every answer: a unary one, an error and a stream; without one, the call's own."""

    def as_alpha(request_id: str) -> dict[str, str]:
        return {**AS_ALPHA, "X-Request-Id": request_id}

    created = {"dataset": {"displayName": "Request ids"}, "datasetId": "request-ids"}
    async with http.post(
        "/v1/projects/alpha/datasets", headers=as_alpha("face-create-1"), json=created
    ) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "face-create-1"
    response, _ = await _error(
        http, "GET", "/v1/projects/alpha/datasets/nope", as_alpha("face-missing-2")
    )
    assert (response.status, response.headers["X-Request-Id"]) == (404, "face-missing-2")
    export = "/v1/projects/alpha/datasets/request-ids:export?format=EXPORT_FORMAT_JSONL"
    async with http.get(export, headers=as_alpha("face-export-3")) as response:
        assert response.content_type == "text/event-stream"
        assert response.headers["X-Request-Id"] == "face-export-3"
        assert (await all_events(response))[-1][0] == "end"
    # TailLogs answers its headers before any log: the request id is among them.
    tail = "/v1/projects/alpha/logs:tail"
    async with http.get(tail, headers=as_alpha("face-tail-4")) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "face-tail-4"
    # None sent, or one the server does not take: the call's own, new each time.
    made = []
    for headers in (AS_ALPHA, AS_ALPHA, as_alpha("not an id; x")):
        async with http.get("/v1/projects/alpha/datasets", headers=headers) as response:
            assert response.status == 200
            made.append(response.headers["X-Request-Id"])
    assert len(set(made)) == 3 and "not an id; x" not in made
    assert all(re.fullmatch(r"[0-9a-f]{32}", made_id) for made_id in made), made


async def test_openapi_document_lists_every_path(
    http: aiohttp.ClientSession, face: HttpFaceHandle
) -> None:
    async with http.get("/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document == face_of(face.runner.app).document
    templates = {
        operation["x-google-http-template"]
        for item in document["paths"].values()
        for operation in item.values()
    }
    table = face_of(face.runner.app).table
    assert templates == {f"{route.http_method} {route.template.text}" for route in table}
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


# --- a service that exists only in the tests -----------------------------------------------------


class EchoServicer:
    """The test-only EchoService; `Echo` answers at once, or after `wait` (`shelves/slow`);
    `Count` streams `page_size` messages, then by name: fails
    (`shelves/fail`), is refused at once (`shelves/deny`) or runs until cancelled
    (`shelves/forever`)."""

    def __init__(self) -> None:
        self.Request = echo_class("EchoRequest")
        self.Response = echo_class("EchoResponse")
        self.Shelf = echo_class("Shelf")
        self.CreateShelfRequest = echo_class("CreateShelfRequest")
        self.cancelled = asyncio.Event()

    def _keys(self, context: grpc.aio.ServicerContext) -> list[str]:
        return sorted(
            key
            for key, _ in context.invocation_metadata() or ()
            if key != "user-agent" and not key.startswith("grpc-")
        )

    async def echo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.name == "shelves/slow":  # answers after `wait`
            await asyncio.sleep(request.wait.ToTimedelta().total_seconds())
        return self.Response(request=request, metadata_keys=self._keys(context))

    async def create_shelf(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.Shelf(
            name=f"{request.parent}/shelves/{request.shelf_id}", theme=request.shelf.theme
        )

    async def count(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request.name == "shelves/deny":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your shelf")
        for index in range(request.page_size):
            yield self.Response(index=index)
        if request.name == "shelves/fail":
            bad = error_details_pb2.BadRequest()
            bad.field_violations.add(field="name", description="broke")
            packed = any_pb2.Any()
            packed.Pack(bad)
            from google.rpc import status_pb2

            status = status_pb2.Status(code=9, message="shelf broke", details=[packed])
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "shelf broke",
                (("grpc-status-details-bin", status.SerializeToString()),),
            )
        if request.name == "shelves/forever":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(
            function: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
            request_class: Any,
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                function,
                request_deserializer=request_class.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )

        return grpc.method_handlers_generic_handler(
            ECHO_SERVICE,
            {
                "Echo": unary(self.echo, self.Request),
                "UpdateEcho": unary(self.echo, self.Request),
                "CreateShelf": unary(self.create_shelf, self.CreateShelfRequest),
                "Count": grpc.unary_stream_rpc_method_handler(
                    self.count,
                    request_deserializer=self.Request.FromString,
                    response_serializer=lambda message: message.SerializeToString(),
                ),
            },
        )


@pytest.fixture(scope="module")
async def echo() -> AsyncIterator[tuple[EchoServicer, str]]:
    servicer = EchoServicer()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([servicer.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def echo_http(
    echo: tuple[EchoServicer, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[HttpFaceHandle, aiohttp.ClientSession]]:
    static = tmp_path_factory.mktemp("console")
    (static / "index.html").write_text("<!doctype html><title>console</title>")
    (static / "app.js").write_text("console.log('hi')")
    (static.parent / "secret.txt").write_text("not served")
    handle = await start_http_face(
        build_http_face([echo_service()], echo[1], static_dir=static), "127.0.0.1", 0
    )
    async with aiohttp.ClientSession(base_url=handle.url) as session:
        yield handle, session
    await handle.close()


async def test_a_new_rpc_is_reachable_with_no_code(
    echo_http: tuple[HttpFaceHandle, aiohttp.ClientSession],
) -> None:
    _, http = echo_http
    headers = {
        "Authorization": "Bearer t0k",
        "Cookie": "session=secret",
        "X-Goog-Api-Key": "key",
        "X-Forwarded-For": "10.0.0.1",
    }
    query = "tags=a&tags=b+c&inner.note=n&colour=RED&labels[team]=x&big=12&flag=true&wait=2s"
    async with http.get(f"/v1/shelves/s1:echo?{query}", headers=headers) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer == {
        "request": {
            "name": "shelves/s1",
            "tags": ["a", "b c"],
            "inner": {"note": "n"},
            "colour": "RED",
            "labels": {"team": "x"},
            "big": "12",
            "flag": True,
            "wait": "2s",
        },
        "metadataKeys": ["authorization"],  # the bearer token, and nothing else
    }
    async with http.post("/v1/shelves/s2:update", json={"pageSize": 4, "tags": ["t"]}) as response:
        assert (await response.json())["request"] == {
            "name": "shelves/s2",
            "pageSize": 4,
            "tags": ["t"],
        }
    async with http.post(
        "/v1/libraries/l1/shelves?shelfId=s9", json={"theme": "poetry"}
    ) as response:
        assert await response.json() == {"name": "libraries/l1/shelves/s9", "theme": "poetry"}
    async with http.get("/v1/notes/n7") as response:  # the additional binding
        assert (await response.json())["request"] == {"inner": {"note": "notes/n7"}}
    async with http.get("/v1/shelves/s1:count?pageSize=3") as response:
        assert response.content_type == "text/event-stream"
        events = await all_events(response)
    assert events == [
        ("message", {}),  # index 0: a default value, left out
        ("message", {"index": 1}),
        ("message", {"index": 2}),
        ("end", {}),
    ]


async def test_stream_errors(echo_http: tuple[HttpFaceHandle, aiohttp.ClientSession]) -> None:
    _, http = echo_http
    async with http.get("/v1/shelves/fail:count?pageSize=2") as response:
        assert response.status == 200  # the stream had started
        events = await all_events(response)
    assert [kind for kind, _ in events] == ["message", "message", "error"]
    error = events[-1][1]["error"]
    assert (error["code"], error["status"], error["message"]) == (
        400,
        "FAILED_PRECONDITION",
        "shelf broke",
    )
    assert error["details"][0]["fieldViolations"] == [{"field": "name", "description": "broke"}]
    async with http.get("/v1/shelves/deny:count?pageSize=2") as response:
        assert response.status == 403
        assert (await response.json())["error"]["message"] == "not your shelf"


async def test_the_callers_grpc_timeout_is_the_calls_deadline(
    echo_http: tuple[HttpFaceHandle, aiohttp.ClientSession],
) -> None:
    _, http = echo_http
    started = time.monotonic()
    response, body = await _error(
        http, "GET", "/v1/shelves/slow:echo?wait=5s", {"Grpc-Timeout": "200m"}
    )
    assert (response.status, body["error"]["status"]) == (504, "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 3
    headers = {"Grpc-Timeout": "10S"}
    async with http.get("/v1/shelves/slow:echo?wait=0.1s", headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["request"]["name"] == "shelves/slow"
    # A stream: the deadline ends it after it started, as an error event.
    headers = {"Grpc-Timeout": "300m"}
    async with http.get("/v1/shelves/forever:count?pageSize=1", headers=headers) as response:
        assert response.status == 200
        events = await asyncio.wait_for(all_events(response), 5)
    assert [kind for kind, _ in events] == ["message", "error"]
    assert events[-1][1]["error"]["status"] == "DEADLINE_EXCEEDED"
    # Not in gRPC's form: refused before any call, naming the header.
    for bad in ("soon", "5s", "0S", "123456789S", "1.5S", "-1S"):
        response, body = await _error(http, "GET", "/v1/shelves/s1:echo", {"Grpc-Timeout": bad})
        assert (response.status, body["error"]["status"]) == (400, "INVALID_ARGUMENT"), bad
        assert set(violations(body)) == {"Grpc-Timeout"}, bad


async def test_a_client_that_leaves_cancels_the_call(
    echo: tuple[EchoServicer, str],
    echo_http: tuple[HttpFaceHandle, aiohttp.ClientSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servicer, _ = echo
    _, http = echo_http
    monkeypatch.setattr(http_face, "SSE_HEARTBEAT_S", 0.05)
    async with http.get("/v1/shelves/forever:count?pageSize=1") as response:
        assert await anext(sse_events(response)) == ("message", {})
        comment = await asyncio.wait_for(response.content.readline(), 5)
        assert comment == b": keep-alive\n"  # an idle stream says it is alive
        response.close()  # the client goes away
    await asyncio.wait_for(servicer.cancelled.wait(), 5)


async def test_closing_the_face_ends_its_streams(echo: tuple[EchoServicer, str]) -> None:
    handle = await start_http_face(build_http_face([echo_service()], echo[1]), "127.0.0.1", 0)
    async with aiohttp.ClientSession(base_url=handle.url) as http:
        async with http.get("/v1/shelves/forever:count?pageSize=1") as response:
            events = sse_events(response)
            assert await anext(events) == ("message", {})
            started = time.monotonic()
            closing = asyncio.create_task(handle.close())
            kind, data = await asyncio.wait_for(anext(events), 5)
        await closing
    assert kind == "error" and data["error"]["status"] == "UNAVAILABLE"
    assert time.monotonic() - started < http_face.SHUTDOWN_TIMEOUT_S


async def test_static_files_beside_the_api(
    echo_http: tuple[HttpFaceHandle, aiohttp.ClientSession],
) -> None:
    _, http = echo_http
    async with http.get("/") as response:
        assert response.status == 200
        assert "<title>console</title>" in await response.text()
    async with http.get("/app.js") as response:
        assert await response.text() == "console.log('hi')"
    for path in ("/missing.js", "/../secret.txt", "/%2e%2e/secret.txt"):
        async with http.get(path) as response:
            assert response.status == 404, path
            assert (await response.json())["error"]["status"] == "NOT_FOUND"
    async with http.get("/openapi.json") as response:
        assert "/v1/shelves/{shelvesId}:echo" in (await response.json())["paths"]


def test_the_face_refuses_a_bad_rule_at_build() -> None:
    service = service_with_rules(("A", http_rule("get", "/v1/{name=x/*}", "*")))
    with pytest.raises(RouteTableError, match="must not have a body"):
        build_http_face([service], "127.0.0.1:1")


async def test_a_body_over_the_limit_is_refused(echo: tuple[EchoServicer, str]) -> None:
    app = build_http_face([echo_service()], echo[1], max_body_bytes=1024)
    handle = await start_http_face(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=handle.url) as http:
            response, body = await _error(
                http, "POST", "/v1/shelves/s1:update", json={"tags": ["x" * 2000]}
            )
            assert (response.status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
            assert body["error"]["message"] == "the request body is larger than 1024 bytes"
            async with http.post("/v1/shelves/s1:update", json={"tags": ["x"]}) as response:
                assert response.status == 200
    finally:
        await handle.close()


async def test_forwarded_services_with_service_config_rules_and_routes_of_its_own(
    gateway: Gateway,
) -> None:
    """What the console needs beside the gateway's own services: ModelService and the
    operations of tuned models (whose rules come from the service config), and a route of
    its own, tried before the face's."""

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"console": True})

    app = build_http_face(
        [*LOCAL_SERVICES, *FORWARDED_SERVICES[1:3]],  # v1beta ModelService, Operations
        gateway.target,
        http_rules=load_service_config_rules(SERVICE_CONFIG),
        routes=[web.get("/console/info", info)],
    )
    handle = await start_http_face(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=handle.url, headers=AS_ALPHA) as http:
            async with http.get("/console/info") as response:
                assert await response.json() == {"console": True}
            async with http.get("/v1beta/models", params={"pageSize": "2"}) as response:
                assert response.status == 200
                assert len((await response.json())["models"]) == 2
            examples = [{"textInput": "1", "output": "2"}]
            body = {
                "baseModel": BASE_MODEL,
                "tuningTask": {"trainingData": {"examples": {"examples": examples}}},
            }
            async with http.post("/v1beta/tunedModels", json=body) as response:
                operation = await response.json()
                assert response.status == 200, operation
            tuned_model = operation["name"].split("/operations/")[0]
            async with http.get(f"/v1beta/{tuned_model}/operations") as response:  # the config
                assert response.status == 200, await response.text()
                listed = await response.json()
            assert [o["name"] for o in listed["operations"]] == [operation["name"]]
            async with http.get("/v1/projects/-/datasets") as response:  # still the face
                assert response.status == 200
    finally:
        await handle.close()
