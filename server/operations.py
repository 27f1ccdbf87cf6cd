"""Operation methods the gateway serves itself, on top of the forwarded GetOperation.

- google.longrunning.Operations.WaitOperation: the REST API has no wait, so the gateway
  polls GetOperation with backoff until the operation is done, the request's timeout
  passes (then it answers the latest state, as the method's contract allows) or the call's
  deadline nears.
- gemini.gateway.v1.OperationWatchService.WatchOperation: polls on the caller's behalf and
  streams the operation every time it changes, ending after it is done.

Operations of the gateway's own (dataset re-runs, named `projects/...`) are read from the
`local_operations` hook instead of upstream; it sees the caller's identity, so a caller
reaches only its own project's operations. Upstream ones go through the forwarder, whose
tenancy check keeps each project to its own tuned models' and batches' operations.

The handlers decode their requests themselves (validation.decode_request): bad bytes and
out-of-range values (a `timeout` beyond a Duration's range) are INVALID_ARGUMENT naming the
field; so is a negative `timeout` or `poll_interval`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from google.longrunning import operations_pb2

from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.server import errors
from gemini_gateway.server.forwarder import Forwarder
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.validation import decode_request, decoding_handler

LocalOperation = Callable[[str, Identity], Awaitable[operations_pb2.Operation | None]]
"""Reads an operation the gateway runs itself; None when the name is not one of its own."""
LOCAL_PREFIX = "projects/"

GET_OPERATION = "/google.longrunning.Operations/GetOperation"
WAIT_OPERATION = "google.longrunning.Operations.WaitOperation"

# WaitOperation polling policy: first re-read after INITIAL_DELAY_S, each later one
# MULTIPLIER times longer, never more than MAX_DELAY_S apart. An answer is sent
# DEADLINE_MARGIN_S before the call's deadline so that it still reaches the caller.
INITIAL_DELAY_S = 0.2
MULTIPLIER = 1.5
MAX_DELAY_S = 5.0
DEADLINE_MARGIN_S = 0.05

# WatchOperation reads the operation every poll_interval: this by default, never faster
# than MIN_POLL_INTERVAL_S.
DEFAULT_POLL_INTERVAL_S = 1.0
MIN_POLL_INTERVAL_S = 0.1


class LocalOperations:
    """GetOperation, WaitOperation and WatchOperation: the gateway's own operations (named
    `projects/...`, answered by `local_operations`) and, through the forwarder, upstream ones."""

    def __init__(
        self, forwarder: Forwarder, *, local_operations: LocalOperation | None = None
    ) -> None:
        self._forwarder = forwarder
        self._get_route = forwarder.routes[GET_OPERATION]
        self._local = local_operations

    async def _get(self, name: str, context: grpc.aio.ServicerContext) -> operations_pb2.Operation:
        if not name:
            raise errors.invalid_argument("the operation name is required", field="name")
        if self._local is not None and name.startswith(LOCAL_PREFIX):
            identity = self._forwarder.callers.identify_call(context)
            local = await self._local(name, identity)
            if local is not None:
                return local
        request = operations_pb2.GetOperationRequest(name=name)
        return await self._forwarder.call(self._get_route, request, context)

    async def get_operation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        """GetOperation: the gateway's own operations (dataset runs) here, others upstream."""
        async with errors.aborting_on_error(context, field="name"):
            return await self._get(request.name, context)

    async def wait_operation(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        wait_until = None
        delay = INITIAL_DELAY_S
        async with errors.aborting_on_error(context, field="name"):
            if request.HasField("timeout"):
                seconds = request.timeout.ToTimedelta().total_seconds()
                if seconds < 0:
                    raise errors.invalid_argument("must not be negative", field="timeout")
                wait_until = time.monotonic() + seconds
            while True:
                operation = await self._get(request.name, context)
                if operation.done:
                    return operation
                left = _seconds_left(wait_until, context)
                if left <= 0:
                    return operation
                await asyncio.sleep(min(delay, left))
                delay = min(delay * MULTIPLIER, MAX_DELAY_S)

    async def watch_operation(
        self, request: watch_pb2.WatchOperationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[watch_pb2.WatchOperationResponse]:
        interval = DEFAULT_POLL_INTERVAL_S
        last_seen = b""
        async with errors.aborting_on_error(context, field="name"):
            if request.HasField("poll_interval"):
                seconds = request.poll_interval.ToTimedelta().total_seconds()
                if seconds < 0:
                    raise errors.invalid_argument("must not be negative", field="poll_interval")
                interval = max(seconds, MIN_POLL_INTERVAL_S)
            while True:
                operation = await self._get(request.name, context)
                state = operation.SerializeToString(deterministic=True)
                if state != last_seen:
                    last_seen = state
                    yield watch_pb2.WatchOperationResponse(operation=operation)
                if operation.done:
                    return
                await asyncio.sleep(interval)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        # No request deserializers: each handler decodes its own request (module docstring).
        wait: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            decoding_handler(
                self.wait_operation, partial(decode_request, operations_pb2.WaitOperationRequest)
            ),
            response_serializer=operations_pb2.Operation.SerializeToString,
        )
        watch: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(
            decoding_handler(
                self.watch_operation, partial(decode_request, watch_pb2.WatchOperationRequest)
            ),
            response_serializer=watch_pb2.WatchOperationResponse.SerializeToString,
        )
        get: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            decoding_handler(
                self.get_operation, partial(decode_request, operations_pb2.GetOperationRequest)
            ),
            response_serializer=operations_pb2.Operation.SerializeToString,
        )
        # Registered before the forwarder's handlers: this GetOperation takes precedence.
        return [
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations", {"GetOperation": get, "WaitOperation": wait}
            ),
            grpc.method_handlers_generic_handler(
                watch_pb2.DESCRIPTOR.services_by_name["OperationWatchService"].full_name,
                {"WatchOperation": watch},
            ),
        ]


def _seconds_left(wait_until: float | None, context: grpc.aio.ServicerContext) -> float:
    """Time left to wait: the request's timeout or the call's deadline, whichever is first."""
    left = float("inf") if wait_until is None else wait_until - time.monotonic()
    remaining = context.time_remaining()
    if remaining is not None:
        left = min(left, remaining - DEADLINE_MARGIN_S)
    return left
