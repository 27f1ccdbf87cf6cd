"""Generic servicer: every route of the table becomes a gRPC handler that forwards upstream.

Unary calls send one JSON request and parse one JSON answer. Server-streaming calls read
`?alt=sse` and write each event to the gRPC client as soon as it is parsed, so chunk N
reaches the caller before the upstream has produced chunk N+1. Requests of methods with a
validator are checked first; a bad one never reaches the upstream.

Requests arrive as bytes and are decoded here (validation.decode_message), so that bytes
that are not the request message are INVALID_ARGUMENT naming the problem, seen by the
metrics like any other status, and never gRPC's UNKNOWN.

Every call is identified first (identity.CallerDirectory); in pass-through mode it must
bring its own API key. Its values are checked (validation.check_values, then the method's
validator), and the tuned models and batches it names must be its project's
(tenancy.Tenancy), all before anything is sent upstream. Generate calls (GenerateContent,
StreamGenerateContent, on models and tuned models alike) also get their labels merged with
the caller's defaults and validated as one set, and are metered: one usage event per call
(and one log event when the project logs calls), handed to the recorder after the call,
never inside a stream's loop beyond noting the chunk. A BatchGenerateContent's inlined
requests get their labels the same way; the batch is kept, and metered once it is seen done
in an answer (batch_usage.BatchUsage).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from gemini_gateway.server import errors, proto_json
from gemini_gateway.server.any_types import mentions_internal_types, normalize_any_types
from gemini_gateway.server.batch_usage import (
    BATCH_GENERATE,
    BATCH_METHODS,
    label_inlined_requests,
)
from gemini_gateway.server.identity import CallerDirectory, Identity
from gemini_gateway.server.labels import LabelError, LabelSet
from gemini_gateway.server.metering import GENERATE_REQUESTS, CallMeter, UsageMetrics
from gemini_gateway.server.recorder import Recorder
from gemini_gateway.server.routes import HttpCall, Route, RouteTable
from gemini_gateway.server.upstream import UpstreamClient
from gemini_gateway.server.upstream_body import (
    does_not_fit,
    not_an_object,
    parse_upstream_json,
    too_deep,
)
from gemini_gateway.server.validation import check_values, decode_message, decoding_handler

if TYPE_CHECKING:
    from gemini_gateway.server.batch_usage import BatchUsage
    from gemini_gateway.server.request_log import LogCapture
    from gemini_gateway.server.tenancy import Tenancy

log = logging.getLogger(__name__)

# A validator returns (field path, description) for each problem; empty means valid.
Validator = Callable[[Message], list[tuple[str, str]]]


def parse_response(route: Route, payload: str | bytes, http_status: int = 200) -> Message:
    """JSON -> response message, ignoring fields this gateway's protos do not know.

    What the upstream got wrong is INTERNAL, by the rule in errors.py (upstream_body.py).
    """
    what = f"an HTTP {http_status} answer for {route.method.name}"
    parsed = parse_upstream_json(payload, what)
    if mentions_internal_types(payload):  # the Batch API's operations (any_types.py)
        parsed = normalize_any_types(parsed)
    # `{"error": ...}` in a 2xx body is an error (mid-stream, or a proxy's), unless the
    # response type has an `error` field of its own (google.longrunning.Operation does).
    if (
        isinstance(parsed, dict)
        and "error" in parsed
        and "error" not in route.response_class.DESCRIPTOR.fields_by_name
    ):
        mapped = errors.from_error_object(parsed["error"], http_status)
        if mapped is not None:
            raise mapped
    if not isinstance(parsed, dict):
        raise not_an_object(what)
    try:
        return proto_json.parse(payload, parsed, route.response_class)
    except json_format.ParseError as exc:
        raise does_not_fit(what, route.response_class.DESCRIPTOR.full_name, str(exc)) from None
    except RecursionError:
        raise too_deep(what) from None


class Forwarder:
    """Turns the route table into gRPC handlers bound to one UpstreamClient."""

    def __init__(
        self,
        routes: RouteTable,
        upstream: UpstreamClient,
        validators: Mapping[str, Validator] | None = None,
        *,
        callers: CallerDirectory,
        recorder: Recorder | None = None,
        usage_metrics: UsageMetrics | None = None,
        strip_labels: bool = False,
        log_capture: LogCapture | None = None,
        tenancy: Tenancy | None = None,
        batch_usage: BatchUsage | None = None,
    ) -> None:
        self.routes = routes
        self.upstream = upstream
        self.callers = callers
        self._validators = dict(validators or {})
        self._recorder = recorder
        self._usage_metrics = usage_metrics or UsageMetrics(())
        self._strip_labels = strip_labels
        self._log_capture = log_capture
        self._tenancy = tenancy
        self._batch_usage = batch_usage

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = defaultdict(dict)
        for route in self.routes:
            service = route.method.containing_service.full_name
            by_service[service][route.method.name] = self._handler(route)
        return [
            grpc.method_handlers_generic_handler(service, handlers)
            for service, handlers in by_service.items()
        ]

    def _handler(self, route: Route) -> grpc.RpcMethodHandler:
        # No request deserializer: the handler gets the bytes and decodes them itself, so a
        # bad request is its INVALID_ARGUMENT, not gRPC's UNKNOWN (module docstring).
        # partial keeps forward_stream recognisable as an async generator function to grpc.aio.
        decode = partial(decode_message, route.request_class)
        serialize = route.response_class.SerializeToString
        if route.server_streaming:
            return grpc.unary_stream_rpc_method_handler(
                decoding_handler(partial(self.forward_stream, route), decode),
                response_serializer=serialize,
            )
        return grpc.unary_unary_rpc_method_handler(
            decoding_handler(partial(self.forward_unary, route), decode),
            response_serializer=serialize,
        )

    def _check(self, route: Route, request: Message) -> None:
        violations = check_values(request)
        validator = self._validators.get(route.method.full_name)
        if validator is not None:
            violations += validator(request)
        if violations:
            raise errors.bad_request(violations)

    async def _prepare(
        self,
        route: Route,
        request: Message,
        context: grpc.aio.ServicerContext,
        identity: Identity | None = None,
    ) -> tuple[HttpCall, CallMeter | None, Identity]:
        """Identify (unless `identity` is given), validate, authorize and transcode; a
        generate call also gets its labels and meter.

        Raises before anything is sent upstream or metered: a bad call costs nothing.
        """
        if identity is None:
            identity = self.callers.identify_call(context)
        self.callers.check_upstream_key(context.invocation_metadata() or ())
        self._check(route, request)
        if self._tenancy is not None:
            await self._tenancy.authorize(identity, route, request)
        if route.full_method == BATCH_GENERATE:
            call = route.to_http(request)
            label_inlined_requests(
                request,  # type: ignore[arg-type]
                identity.default_labels,
                self._strip_labels,
                call.body,
            )
            return call, None, identity
        if route.method.input_type.full_name not in GENERATE_REQUESTS:
            return route.to_http(request), None, identity
        labels = self._merge_labels(request, identity)
        call = route.to_http(request)
        if self._strip_labels and call.body is not None:
            call.body.pop("labels", None)
        # With request logging, LogCapture picks the meter: one that also logs the call when
        # its project logs calls.
        new_meter = CallMeter if self._log_capture is None else self._log_capture.meter
        meter = new_meter(
            self._recorder,
            self._usage_metrics,
            identity,
            request,  # type: ignore[arg-type]
            labels,
            route.method.name,
            route.server_streaming,
        )
        return call, meter, identity

    @staticmethod
    def _merge_labels(request: Message, identity: Identity) -> LabelSet:
        """The call's labels over the caller's defaults, validated as one set."""
        own = request.labels  # type: ignore[attr-defined]
        try:
            labels = LabelSet.merged(identity.default_labels, own)
        except LabelError as exc:
            raise errors.bad_request(exc.violations) from None
        if len(labels) != len(own):
            own.update(labels.as_dict())  # the defaults travel upstream too
        return labels

    async def call(
        self,
        route: Route,
        request: Message,
        context: grpc.aio.ServicerContext,
        identity: Identity | None = None,
    ) -> Message:
        """Forward one unary call; raises UpstreamError (routes.UnroutableRequest for a
        request that fits no binding). `identity`: the caller, when the gateway makes the
        call itself for one whose token it does not hold (an adopted re-run); by default the
        call's metadata says who."""
        call, meter, identity = await self._prepare(route, request, context, identity)
        if self._tenancy is not None and self._tenancy.lists(route, request):
            fetch = partial(self._fetch, route, context)
            response = await self._tenancy.list_visible(identity, route, request, fetch)
        else:
            response = await self._send(route, call, context, meter)
            if self._tenancy is not None:
                await self._tenancy.created(identity, route, response)
        batch_usage = self._batch_usage
        if batch_usage is not None and route.full_method in BATCH_METHODS:
            if route.full_method == BATCH_GENERATE:
                await batch_usage.created(identity, request, response)  # type: ignore[arg-type]
            else:
                await batch_usage.seen(route.full_method, response)
        return response

    async def _fetch(
        self, route: Route, context: grpc.aio.ServicerContext, request: Message
    ) -> Message:
        """One more upstream call of `route` within the same gRPC call (a list's pages)."""
        return await self._send(route, route.to_http(request), context, None)

    async def _send(
        self,
        route: Route,
        call: HttpCall,
        context: grpc.aio.ServicerContext,
        meter: CallMeter | None,
    ) -> Message:
        error: BaseException | None = None
        try:
            body = await self.upstream.call(
                call, context.invocation_metadata() or (), context.time_remaining()
            )
            response = parse_response(route, body)
            if meter is not None:
                meter.response(response)  # type: ignore[arg-type]
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            if meter is not None:
                meter.finish(error)

    async def forward_unary(
        self, route: Route, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        try:
            return await self.call(route, request, context)
        except Exception as exc:  # errors.aborting_on_error, without a context manager
            await errors.abort_for(context, exc)

    async def forward_stream(
        self, route: Route, request: Message, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Message]:
        async with errors.aborting_on_error(context):
            call, meter, _identity = await self._prepare(route, request, context)
            error: BaseException | None = None
            try:
                async with self.upstream.stream_events(
                    call, context.invocation_metadata() or (), context.time_remaining()
                ) as events:
                    async for payload in events:
                        message = parse_response(route, payload)
                        if meter is not None:
                            meter.response(message)  # type: ignore[arg-type]
                        yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                if meter is not None:
                    meter.finish(error)
