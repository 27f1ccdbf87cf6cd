"""Retries: the rule (statuses, connection failures, methods), waits, the deadline, the budget.

The UpstreamClient runs against a scripted transport: each attempt gets the next outcome
(an answer, or the UpstreamError a real transport raises from its HTTP library's error).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from gemini_gateway.server import errors
from gemini_gateway.server.retries import (
    Retrier,
    RetryBudget,
    RetryPolicy,
    RetryReason,
    connection_reason,
    parse_retry_after,
    server_delay_s,
    side_effect_free,
    status_reason,
)
from gemini_gateway.server.routes import HttpCall
from gemini_gateway.server.upstream import GeminiFlavour, UpstreamClient, method_label

V1BETA = "google.ai.generativelanguage.v1beta"
GENERATE = HttpCall(
    "post",
    "/v1beta/models/m:generateContent",
    [],
    {},
    f"{V1BETA}.GenerativeService.GenerateContent",
)
STREAM = HttpCall(
    "post",
    "/v1beta/models/m:streamGenerateContent",
    [],
    {},
    f"{V1BETA}.GenerativeService.StreamGenerateContent",
)
CREATE_TUNED = HttpCall(
    "post", "/v1beta/tunedModels", [], {}, f"{V1BETA}.ModelService.CreateTunedModel"
)
DELETE_TUNED = HttpCall(
    "delete", "/v1beta/tunedModels/t", [], None, f"{V1BETA}.ModelService.DeleteTunedModel"
)
GET_MODEL = HttpCall("get", "/v1beta/models/m", [], None, f"{V1BETA}.ModelService.GetModel")

UNAVAILABLE_BODY = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}


def _quota_body(delay: str) -> dict[str, Any]:
    return {
        "error": {
            "code": 429,
            "message": "quota",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}],
        }
    }


def _refused() -> errors.UpstreamError:
    key = SimpleNamespace(host="127.0.0.1", port=9, ssl=False)
    cause = aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))  # type: ignore[arg-type]
    return _raised_from(cause)


def _dropped() -> errors.UpstreamError:
    return _raised_from(aiohttp.ServerDisconnectedError())


def _raised_from(cause: BaseException) -> errors.UpstreamError:
    """The UpstreamError as the transports raise it: `from` the library's exception."""
    try:
        raise errors.UpstreamError(grpc.StatusCode.UNAVAILABLE, "cannot reach upstream") from cause
    except errors.UpstreamError as exc:
        return exc


@dataclass
class _Answer:
    status: int
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    closed: bool = False

    async def read(self) -> bytes:
        return self.body

    async def read_prefix(self, limit: int) -> tuple[bytes, bool]:
        return self.body[:limit], len(self.body) > limit

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    async def close(self) -> None:
        self.closed = True


def _answer(status: int, body: Any = None, **headers: str) -> _Answer:
    return _Answer(status, json.dumps(body if body is not None else {}).encode(), headers)


class _Script:
    """A transport that answers each attempt with the next outcome, and notes what it got."""

    def __init__(self, *outcomes: _Answer | BaseException) -> None:
        self._outcomes = list(outcomes)
        self.timeouts: list[float] = []
        self.headers: list[dict[str, str]] = []

    @property
    def attempts(self) -> int:
        return len(self.timeouts)

    async def open(
        self,
        verb: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> _Answer:
        self.timeouts.append(timeout_s)
        self.headers.append(dict(headers))
        outcome = self._outcomes.pop(0) if len(self._outcomes) > 1 else self._outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        pass


def _client(
    script: _Script, policy: RetryPolicy | None = None, *, budget: RetryBudget | None = None
) -> UpstreamClient:
    policy = policy or RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.001)
    retrier = Retrier(policy, budget, jitter=lambda: 1.0)
    flavour = GeminiFlavour("http://upstream.test", None, pass_through=False)
    return UpstreamClient(flavour, script, 30.0, retrier=retrier)  # type: ignore[arg-type]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _retries(reason: RetryReason) -> float:
    return _sample("gateway_upstream_retries_total", reason=reason.value)


def test_the_rule_by_method() -> None:
    assert side_effect_free(GENERATE) and side_effect_free(STREAM) and side_effect_free(GET_MODEL)
    assert not side_effect_free(CREATE_TUNED) and not side_effect_free(DELETE_TUNED)
    # 429: the quota refused it, for every method; 503 only where repeating changes nothing.
    assert status_reason(429, False) is RetryReason.RESOURCE_EXHAUSTED
    assert status_reason(503, True) is RetryReason.UNAVAILABLE
    assert status_reason(503, False) is None
    for never in (400, 404, 409, 500, 502, 504):
        assert status_reason(never, True) is None


def test_connection_failures_by_when_they_happened() -> None:
    # Refused: nothing was sent, any method may go again.
    assert connection_reason(_refused(), False) is RetryReason.CONNECT_FAILED
    # Dropped after sending: the upstream may have acted on it.
    assert connection_reason(_dropped(), True) is RetryReason.CONNECTION_BROKEN
    assert connection_reason(_dropped(), False) is None
    request = httpx.Request("POST", "http://upstream.test")
    assert connection_reason(_raised_from(httpx.ConnectError("refused")), False) is (
        RetryReason.CONNECT_FAILED
    )
    broken = _raised_from(httpx.RemoteProtocolError("Server disconnected", request=request))
    assert connection_reason(broken, True) is RetryReason.CONNECTION_BROKEN
    assert connection_reason(broken, False) is None
    # Time limits, TLS refusals and errors with no cause are never retried.
    assert connection_reason(_raised_from(TimeoutError()), True) is None
    assert connection_reason(_raised_from(httpx.ConnectTimeout("slow")), True) is None
    assert connection_reason(errors.UpstreamError(grpc.StatusCode.UNAVAILABLE, "x"), True) is None
    tls = aiohttp.ClientConnectorCertificateError(
        SimpleNamespace(host="h", port=443, ssl=True),  # type: ignore[arg-type]
        OSError("bad certificate"),
    )
    assert connection_reason(_raised_from(tls), False) is None


def test_server_delay_from_retry_info_then_retry_after() -> None:
    quota = errors.from_http_response(
        429, "application/json", json.dumps(_quota_body("1.5s")).encode()
    )
    assert server_delay_s(quota, "30") == 1.5  # RetryInfo first
    plain = errors.from_http_response(
        503, "application/json", json.dumps(UNAVAILABLE_BODY).encode()
    )
    assert server_delay_s(plain, "4") == 4.0
    assert server_delay_s(plain, None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert parse_retry_after("soon") is None


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, max_attempts=9)
    assert [policy.backoff_cap_s(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    low = Retrier(policy, RetryBudget(1, 100), jitter=lambda: 0.0)
    high = Retrier(policy, RetryBudget(1, 100), jitter=lambda: 0.999)
    unavailable = RetryReason.UNAVAILABLE
    assert low.delay_s(unavailable, None, 3, 0.0, 60) == 0.0
    assert high.delay_s(unavailable, None, 3, 0.0, 60) == pytest.approx(0.3996)
    # A server delay is a floor: never sooner than asked.
    assert low.delay_s(RetryReason.RESOURCE_EXHAUSTED, 1.25, 1, 0.0, 60) == 1.25


def test_waits_and_attempts_must_fit_the_time_left() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.1, max_server_delay_s=10)
    retrier = Retrier(policy, RetryBudget(1, 100), jitter=lambda: 1.0)
    skipped = _sample("gateway_upstream_retries_skipped_total", why="deadline")
    quota = RetryReason.RESOURCE_EXHAUSTED
    assert retrier.delay_s(quota, 7.0, 1, 0.01, 5.0) is None  # 7 s asked, 5 s left
    # The next attempt must have at least as long as the failed one took.
    assert retrier.delay_s(RetryReason.UNAVAILABLE, None, 1, 2.0, 2.05) is None
    assert retrier.delay_s(RetryReason.UNAVAILABLE, None, 1, 0.2, 2.05) == 0.1
    assert _sample("gateway_upstream_retries_skipped_total", why="deadline") == skipped + 2
    too_long = _sample("gateway_upstream_retries_skipped_total", why="server_delay")
    assert retrier.delay_s(quota, 11.0, 1, 0.0, 600) is None  # over max_server_delay_s
    assert _sample("gateway_upstream_retries_skipped_total", why="server_delay") == too_long + 1
    assert retrier.delay_s(quota, 1.0, 3, 0.0, 600) is None  # max_attempts reached
    assert retrier.delay_s(None, None, 1, 0.0, 600) is None  # not retryable at all


def test_budget_is_a_share_of_recent_calls_plus_a_floor() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10, slots=10, clock=lambda: now[0])
    for _ in range(10):
        budget.deposit()
    assert budget.try_withdraw() and budget.try_withdraw()  # 10 calls * 0.2
    assert not budget.try_withdraw()
    now[0] = 10.5  # the calls and retries of the first slot have expired
    assert budget.balance() == 0 and not budget.try_withdraw()
    for _ in range(5):
        budget.deposit()
    assert budget.try_withdraw() and not budget.try_withdraw()
    floor = RetryBudget(ratio=0.0, min_per_s=0.3, window_s=10, clock=lambda: now[0])
    assert [floor.try_withdraw() for _ in range(4)] == [True, True, True, False]


async def test_unavailable_twice_then_answered() -> None:
    script = _Script(_answer(503, UNAVAILABLE_BODY), _answer(503, UNAVAILABLE_BODY), _answer(200))
    before = _retries(RetryReason.UNAVAILABLE)
    assert await _client(script).call(GENERATE, (), 10.0) == b"{}"
    assert script.attempts == 3
    assert _retries(RetryReason.UNAVAILABLE) == before + 2
    # Every attempt got only what was left of the call's 10 s.
    assert script.timeouts[0] == 10.0 and script.timeouts[2] < script.timeouts[1] < 10.0


async def test_at_most_max_attempts_then_the_last_error() -> None:
    script = _Script(_answer(503, UNAVAILABLE_BODY))
    with pytest.raises(errors.UpstreamError) as failed:
        await _client(script).call(GENERATE, (), 10.0)
    assert failed.value.code is grpc.StatusCode.UNAVAILABLE
    assert failed.value.message == "overloaded"
    assert script.attempts == 3


async def test_methods_that_change_state_are_retried_only_when_nothing_was_done() -> None:
    # 503 and a connection dropped after sending: CreateTunedModel may have been created.
    for outcome in (_answer(503, UNAVAILABLE_BODY), _dropped()):
        script = _Script(outcome, _answer(200))
        with pytest.raises(errors.UpstreamError):
            await _client(script).call(CREATE_TUNED, (), 10.0)
        assert script.attempts == 1
    # 429 (refused by the quota) and a refused connection (nothing sent): sent again.
    quota = _answer(429, _quota_body("0s"))
    for outcome in (quota, _refused()):
        script = _Script(outcome, _answer(200))
        assert await _client(script).call(CREATE_TUNED, (), 10.0) == b"{}"
        assert script.attempts == 2
    # The same dropped connection is retried for a generation, which changes nothing.
    script = _Script(_dropped(), _answer(200))
    before = _retries(RetryReason.CONNECTION_BROKEN)
    assert await _client(script).call(GENERATE, (), 10.0) == b"{}"
    assert script.attempts == 2 and _retries(RetryReason.CONNECTION_BROKEN) == before + 1


async def test_retry_after_header_is_honoured_within_the_limit() -> None:
    policy = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.001, max_server_delay_s=1)
    script = _Script(_answer(503, UNAVAILABLE_BODY, **{"retry-after": "3"}), _answer(200))
    skipped = _sample("gateway_upstream_retries_skipped_total", why="server_delay")
    with pytest.raises(errors.UpstreamError):
        await _client(script, policy).call(GENERATE, (), 10.0)
    assert script.attempts == 1
    assert _sample("gateway_upstream_retries_skipped_total", why="server_delay") == skipped + 1
    script = _Script(_answer(503, UNAVAILABLE_BODY, **{"retry-after": "0"}), _answer(200))
    assert await _client(script, policy).call(GENERATE, (), 10.0) == b"{}"
    assert script.attempts == 2


async def test_stream_opening_is_retried_and_nothing_after_it() -> None:
    script = _Script(_answer(503, UNAVAILABLE_BODY), _Answer(200, b"data: {}\r\n\r\n"))
    client = _client(script)
    async with client.stream(STREAM, (), 10.0) as chunks:
        assert [chunk async for chunk in chunks] == [b"data: {}\r\n\r\n"]
    assert script.attempts == 2


async def test_spent_budget_stops_retries() -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=0.0)
    exhausted = _sample("gateway_upstream_retry_budget_exhausted_total")
    script = _Script(_answer(503, UNAVAILABLE_BODY), _answer(200))
    with pytest.raises(errors.UpstreamError):
        await _client(script, budget=budget).call(GENERATE, (), 10.0)
    assert script.attempts == 1
    assert _sample("gateway_upstream_retry_budget_exhausted_total") == exhausted + 1


async def test_healthy_calls_are_one_request_each() -> None:
    script = _Script(_answer(200))
    client = _client(script)
    before = {reason: _retries(reason) for reason in RetryReason}
    for _ in range(20):
        await client.call(GENERATE, (), 10.0)
    assert script.attempts == 20
    assert {reason: _retries(reason) for reason in RetryReason} == before


async def test_without_a_retrier_each_call_is_one_request() -> None:
    script = _Script(_answer(503, UNAVAILABLE_BODY), _answer(200))
    flavour = GeminiFlavour("http://upstream.test", None, pass_through=False)
    client = UpstreamClient(flavour, script, 30.0)  # type: ignore[arg-type]
    with pytest.raises(errors.UpstreamError):
        await client.call(GENERATE, (), 10.0)
    assert script.attempts == 1


async def test_each_attempt_is_timed_by_method_and_http_status() -> None:
    method = method_label(GENERATE.selector)
    assert method == f"/{V1BETA}.GenerativeService/GenerateContent"
    name = "gateway_upstream_request_seconds_count"
    ok, unavailable = (
        _sample(name, method=method, code="200"),
        _sample(name, method=method, code="503"),
    )
    refused = _sample(name, method=method, code="unreachable")
    script = _Script(_answer(503, UNAVAILABLE_BODY), _refused(), _answer(200))
    await _client(script).call(GENERATE, (), 10.0)
    assert _sample(name, method=method, code="200") == ok + 1
    assert _sample(name, method=method, code="503") == unavailable + 1
    assert _sample(name, method=method, code="unreachable") == refused + 1


def test_the_emulators_transient_faults() -> None:
    """`first:<n>[:<tag>]`, the fault the integration tests use: n failures, then answers."""
    from gemini_gateway.emulator.faults import FaultSyntaxError, parse_fault_list

    tag = f"unit-{id(object())}"
    plans = [parse_fault_list(f"503, chunks:4, first:2:{tag}") for _ in range(4)]
    assert [plan.error_code for plan in plans] == [503, 503, None, None]
    assert {plan.chunks for plan in plans} == {4}  # shaping words stay
    other = parse_fault_list(f"429,first:1:{tag}-b")  # another list: a count of its own
    assert other.error_code == 429
    for bad in ("503,first:0", "503,first:x", "503,first"):
        with pytest.raises(FaultSyntaxError):
            parse_fault_list(bad)
