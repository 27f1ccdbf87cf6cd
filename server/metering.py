"""Metering of generate calls: one usage event per GenerateContent / StreamGenerateContent.

A `CallMeter` follows one call from the moment it is sent upstream: the first chunk's time,
the latest usageMetadata (a stream's last chunk carries the totals), and how the call ended.
When the call ends it hands one `UsageEvent` to the recorder's bounded queue (never waiting
for the store) and counts requests and tokens in Prometheus, by model and by the label keys
of an allow-list only: a label key outside it never becomes a metric dimension.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, Counter

from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_generative_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.recorder import Recorder, UsageEvent

# The generate requests of every API version served (v1beta, v1): calls carrying one have
# their labels checked and are metered.
GENERATE_REQUESTS = frozenset(
    module.GenerateContentRequest.DESCRIPTOR.full_name
    for module in (generative_service_pb2, v1_generative_service_pb2)
)


def status_name(error: BaseException | None) -> str:
    """The gRPC code name a caller sees for a call that ended with `error`."""
    if error is None:
        return "OK"
    if isinstance(error, errors.UpstreamError):
        return error.code.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return errors.client_status(error).code.name  # as errors.aborting_on_error answers it


class UsageMetrics:
    """Prometheus counters of generate calls and tokens, by model and allowed label keys."""

    def __init__(self, label_keys: Iterable[str]) -> None:
        self.label_keys = tuple(dict.fromkeys(label_keys))
        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}
        # Prometheus label names allow [a-zA-Z_][a-zA-Z0-9_]*: `label_` + the key, dashes
        # and other characters as `_`.
        dims = tuple("label_" + "".join(c if c.isalnum() else "_" for c in key)
                     for key in self.label_keys)  # fmt: skip
        self.requests = _counter(
            "gateway_generate_requests", "Generate calls by model, status and allowed labels.",
            ("model", "method", "status", *dims),
        )  # fmt: skip
        self.tokens = _counter(
            "gateway_generate_tokens", "Tokens of generate calls by kind, model, allowed labels.",
            ("model", "kind", *dims),
        )  # fmt: skip

    def observe(self, event: UsageEvent) -> None:
        keys = self.label_keys
        values = tuple([event.labels.get(key, "") for key in keys]) if keys else ()
        self._child(self.requests, (event.model, event.method, event.status, *values)).inc()
        for kind, amount in (
            ("prompt", event.prompt_tokens),
            ("candidates", event.candidates_tokens),
            ("cached", event.cached_tokens),
            ("thoughts", event.thoughts_tokens),
            ("tool_use", event.tool_use_tokens),
        ):  # fmt: skip
            if amount:
                self._child(self.tokens, (event.model, kind, *values)).inc(amount)

    def _child(self, counter: Counter, values: tuple[str, ...]) -> Any:
        """counter.labels(*values), looked up once (labels() checks and locks every time)."""
        key = (counter, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*values)
        return child


_COUNTERS: dict[tuple[str, tuple[str, ...]], Counter] = {}


def _counter(name: str, documentation: str, labelnames: tuple[str, ...]) -> Counter:
    """The process's Counter of that name and label names.

    The label names follow the configured allow-list; a gateway started in the same process
    with another list (tests) replaces the counter, as a restart would.
    """
    key = (name, labelnames)
    if key not in _COUNTERS:
        for old in [k for k in _COUNTERS if k[0] == name]:
            REGISTRY.unregister(_COUNTERS.pop(old))
        _COUNTERS[key] = Counter(name, documentation, labelnames)
    return _COUNTERS[key]


class CallMeter:
    """Follows one generate call and records it once when it ends."""

    __slots__ = (
        "_first_chunk",
        "_identity",
        "_labels",
        "_method",
        "_metrics",
        "_model",
        "_recorder",
        "_started",
        "_streaming",
        "_usage",
    )  # fmt: skip

    def __init__(
        self,
        recorder: Recorder | None,
        metrics: UsageMetrics,
        identity: Identity,
        request: generative_service_pb2.GenerateContentRequest,
        labels: Mapping[str, str],
        method: str,
        streaming: bool,
    ) -> None:
        self._recorder = recorder
        self._metrics = metrics
        self._identity = identity
        self._model = request.model
        self._labels = dict(labels)
        self._method = method
        self._streaming = streaming
        self._started = time.perf_counter()
        self._first_chunk: float | None = None
        self._usage: generative_service_pb2.GenerateContentResponse.UsageMetadata | None = None

    def response(self, message: generative_service_pb2.GenerateContentResponse) -> None:
        """A unary answer or a streamed chunk: keep its usage (the last one holds totals)."""
        if self._first_chunk is None:
            self._first_chunk = time.perf_counter()
        if message.HasField("usage_metadata"):
            self._usage = message.usage_metadata

    def finish(self, error: BaseException | None) -> UsageEvent:
        """Count the call and hand its usage event to the recorder; returns the event."""
        status = status_name(error)
        usage = self._usage
        first_chunk_ms = None
        if self._streaming and self._first_chunk is not None:
            first_chunk_ms = (self._first_chunk - self._started) * 1000
        event = UsageEvent(
            time=datetime.now(UTC),
            project=self._identity.project,
            caller=self._identity.caller,
            model=self._model,
            method=self._method,
            labels=self._labels,
            status=status,
            prompt_tokens=usage.prompt_token_count if usage else 0,
            candidates_tokens=usage.candidates_token_count if usage else 0,
            # v1's UsageMetadata has no cached_content_token_count: what it lacks counts 0.
            cached_tokens=getattr(usage, "cached_content_token_count", 0) if usage else 0,
            thoughts_tokens=usage.thoughts_token_count if usage else 0,
            tool_use_tokens=usage.tool_use_prompt_token_count if usage else 0,
            total_tokens=usage.total_token_count if usage else 0,
            latency_ms=(time.perf_counter() - self._started) * 1000,
            first_chunk_ms=first_chunk_ms,
            # A stream that did not end OK was cut short: its tokens are what it saw.
            incomplete=self._streaming and status != "OK",
        )
        self._metrics.observe(event)
        if self._recorder is not None:
            self._recorder.record(event)
        return event
