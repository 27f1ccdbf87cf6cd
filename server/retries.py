"""Retries of upstream requests: which failures, which methods, how long to wait, how many.

A request is retried only when the upstream certainly or very probably did not act on it,
and only before any byte of its answer reached the gateway. For a stream that point is its
opening (UpstreamClient.stream): once the upstream has answered 2xx, nothing is retried, so
no chunk can ever reach the caller twice. The rule, by what went wrong:

=========================================================  ==============================
what went wrong (no answer byte received yet)              retried for
=========================================================  ==============================
HTTP 429: the quota refused the request                    every method
the connection could not be made (nothing was sent)        every method
HTTP 503: the service was unavailable                      side-effect-free methods
the connection broke after the request was sent            side-effect-free methods
anything else: other 4xx and 5xx, the time limit, a body   never
cut after the headers, a stream after its opening
=========================================================  ==============================

google/rpc/code.proto says of UNAVAILABLE that it is "not always safe to retry
non-idempotent operations", and a connection that breaks after the request went out may
have carried a request the upstream then carried out. So those two are retried only for
methods that change nothing upstream (SIDE_EFFECT_FREE: generation, token counting,
embeddings and every GET); CreateTunedModel, UpdateTunedModel, DeleteTunedModel,
BatchGenerateContent and the operations' Cancel/Delete are retried only on 429 or when the
connection was refused. Retrying a generation whose answer was lost may bill it twice;
it changes no state.

How long to wait: exponential backoff with full jitter (a random wait between zero and
`initial * 2**(n-1)`, capped at `max_backoff_s`), or longer when the upstream says so:
google.rpc.RetryInfo `retryDelay` in the error body, or a `Retry-After` header. A server
delay over `max_server_delay_s` is not waited for: the caller gets the error (with its
RetryInfo) at once and decides.

Always inside the caller's time: an attempt is started only when, after its wait, at least
as much time is left as the failed attempt took (and never less than MIN_ATTEMPT_S);
otherwise the caller gets the last error at once instead of a DEADLINE_EXCEEDED later.

How many: at most `max_attempts` per call (the first included), and a retry budget for the
whole gateway, as Finagle's and Envoy's: over the last BUDGET_WINDOW_S seconds, retries may
be at most `budget_ratio` of the calls made plus `budget_min_per_s` per second. During an
outage every call fails, the budget runs dry, and the upstream sees about (1 + ratio)
times the load instead of `max_attempts` times.

Counted in metrics (metrics.py): gateway_upstream_retries_total{reason},
gateway_upstream_retry_budget_exhausted_total and gateway_upstream_retries_skipped_total{why}.
"""

from __future__ import annotations

import random
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import aiohttp
from google.rpc import error_details_pb2

from gemini_gateway.server import metrics

if TYPE_CHECKING:
    from gemini_gateway.server.config import Settings
    from gemini_gateway.server.errors import UpstreamError
    from gemini_gateway.server.routes import HttpCall

# Each retry waits up to twice as long as the one before (before jitter and the cap).
BACKOFF_MULTIPLIER = 2.0
# An attempt started with less time than this left would most likely be cut by the deadline.
MIN_ATTEMPT_S = 0.05
# The retry budget looks this far back, in BUDGET_SLOTS steps.
BUDGET_WINDOW_S = 10.0
BUDGET_SLOTS = 10

# POST methods that compute an answer and change nothing upstream (every GET is too).
SIDE_EFFECT_FREE = frozenset(
    {
        "GenerateContent",
        "StreamGenerateContent",
        "CountTokens",
        "EmbedContent",
        "BatchEmbedContents",
        "GenerateAnswer",
        "CountMessageTokens",
        "CountTextTokens",
        "GenerateMessage",
        "GenerateText",
        "EmbedText",
        "BatchEmbedText",
    }
)

_RETRY_INFO = error_details_pb2.RetryInfo.DESCRIPTOR.full_name


class RetryReason(StrEnum):
    """Why a request was sent again (the `reason` label of gateway_upstream_retries_total)."""

    RESOURCE_EXHAUSTED = "resource_exhausted"  # HTTP 429
    UNAVAILABLE = "unavailable"  # HTTP 503
    CONNECT_FAILED = "connect_failed"  # nothing was sent
    CONNECTION_BROKEN = "connection_broken"  # sent, then the connection broke, no answer


class SkipReason(StrEnum):
    """Why a retryable failure was not retried (gateway_upstream_retries_skipped_total)."""

    DEADLINE = "deadline"  # the wait and an attempt would not fit in the time left
    SERVER_DELAY = "server_delay"  # RetryInfo / Retry-After asked for more than allowed


def side_effect_free(call: HttpCall) -> bool:
    """Whether sending `call` twice leaves the upstream as sending it once would."""
    if call.verb.lower() == "get":
        return True
    return call.selector.rpartition(".")[2] in SIDE_EFFECT_FREE


def status_reason(http_status: int, side_effect_free: bool) -> RetryReason | None:
    """The retry reason of a non-2xx answer, or None when it is not retried."""
    if http_status == 429:
        return RetryReason.RESOURCE_EXHAUSTED
    if http_status == 503 and side_effect_free:
        return RetryReason.UNAVAILABLE
    return None


def connection_reason(error: BaseException, side_effect_free: bool) -> RetryReason | None:
    """The retry reason of a request that got no answer, from the transport's exception.

    The transports raise UpstreamError from the HTTP library's exception; that cause tells
    a connection never made (aiohttp ClientConnectorError, httpx ConnectError) from one
    that broke after the request was written. Time limits are never retried.
    """
    cause = error.__cause__
    if cause is None or isinstance(cause, TimeoutError) or _tls_failure(cause):
        return None  # a TLS handshake refused is refused again
    if isinstance(cause, aiohttp.ClientConnectorError):
        return RetryReason.CONNECT_FAILED
    if isinstance(cause, _AIOHTTP_BROKEN):
        return RetryReason.CONNECTION_BROKEN if side_effect_free else None
    httpx = sys.modules.get("httpx")  # the optional transport; loaded when it is used
    if httpx is not None:
        if isinstance(cause, httpx.TimeoutException):
            return None
        if isinstance(cause, httpx.ConnectError):
            return RetryReason.CONNECT_FAILED
        if isinstance(cause, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return RetryReason.CONNECTION_BROKEN if side_effect_free else None
    return None


_AIOHTTP_BROKEN = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
    aiohttp.ClientOSError,
)


def _tls_failure(exc: BaseException) -> bool:
    """Whether a TLS problem (certificate, handshake) is anywhere in the exception's chain."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, ssl.SSLError | aiohttp.ClientSSLError):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def server_delay_s(error: UpstreamError, retry_after: str | None) -> float | None:
    """How long the upstream asked to wait: RetryInfo's retryDelay, else Retry-After."""
    for detail in error.details:
        if detail.type_url.rpartition("/")[2] == _RETRY_INFO:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info) and info.HasField("retry_delay"):
                return max(info.retry_delay.ToTimedelta().total_seconds(), 0.0)
    return parse_retry_after(retry_after)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How retries are made; the defaults are those of the settings (config.py)."""

    enabled: bool = True
    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    max_server_delay_s: float = 2.0
    budget_ratio: float = 0.2
    budget_min_per_s: float = 3.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            enabled=settings.retries_enabled and settings.retry_max_attempts > 1,
            max_attempts=settings.retry_max_attempts,
            initial_backoff_s=settings.retry_initial_backoff_s,
            max_backoff_s=settings.retry_max_backoff_s,
            max_server_delay_s=settings.retry_max_server_delay_s,
            budget_ratio=settings.retry_budget_ratio,
            budget_min_per_s=settings.retry_budget_min_per_s,
        )

    def backoff_cap_s(self, failed_attempt: int) -> float:
        """The longest wait after attempt number `failed_attempt` (1 is the first)."""
        growth = BACKOFF_MULTIPLIER ** min(failed_attempt - 1, 64)
        return min(self.max_backoff_s, self.initial_backoff_s * growth)


class RetryBudget:
    """Retries allowed: `ratio` of the calls of the last `window_s`, plus `min_per_s`.

    Calls deposit, retries withdraw; both are counted in `slots` time slots that expire in
    turn, so the budget follows the recent traffic. O(1) per call.
    """

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        window_s: float = BUDGET_WINDOW_S,
        slots: int = BUDGET_SLOTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._reserve = min_per_s * window_s
        self._slot_s = window_s / slots
        self._clock = clock
        self._calls = [0] * slots
        self._retries = [0] * slots
        self._total_calls = 0
        self._total_retries = 0
        self._slot = 0
        self._slot_started = clock()

    def _advance(self) -> None:
        now = self._clock()
        steps = int((now - self._slot_started) / self._slot_s)
        if steps <= 0:
            return
        slots = len(self._calls)
        for _ in range(min(steps, slots)):
            self._slot = (self._slot + 1) % slots
            self._total_calls -= self._calls[self._slot]
            self._total_retries -= self._retries[self._slot]
            self._calls[self._slot] = self._retries[self._slot] = 0
        self._slot_started += steps * self._slot_s

    def deposit(self) -> None:
        """A call was made."""
        self._advance()
        self._calls[self._slot] += 1
        self._total_calls += 1

    def balance(self) -> float:
        """Retries that may still be made now."""
        self._advance()
        return self._reserve + self._ratio * self._total_calls - self._total_retries

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        if self.balance() < 1:
            return False
        self._retries[self._slot] += 1
        self._total_retries += 1
        return True


class Retrier:
    """Decides, failure by failure, whether and after how long a request is sent again."""

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget | None = None,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.budget = budget or RetryBudget(policy.budget_ratio, policy.budget_min_per_s)
        self._jitter = jitter

    def call_started(self) -> None:
        self.budget.deposit()

    def delay_s(
        self,
        reason: RetryReason | None,
        server_delay: float | None,
        failed_attempt: int,
        attempt_took_s: float,
        time_left_s: float,
    ) -> float | None:
        """The wait before sending again, or None (the failure goes to the caller).

        Each retry made, and each retryable failure not retried, is counted.
        """
        if reason is None or failed_attempt >= self.policy.max_attempts:
            return None
        if server_delay is not None and server_delay > self.policy.max_server_delay_s:
            metrics.RETRIES_SKIPPED.labels(SkipReason.SERVER_DELAY.value).inc()
            return None
        delay = self._jitter() * self.policy.backoff_cap_s(failed_attempt)
        if server_delay is not None:
            delay = max(delay, server_delay)
        if delay + max(attempt_took_s, MIN_ATTEMPT_S) > time_left_s:
            metrics.RETRIES_SKIPPED.labels(SkipReason.DEADLINE.value).inc()
            return None
        if not self.budget.try_withdraw():
            metrics.RETRY_BUDGET_EXHAUSTED.inc()
            return None
        metrics.UPSTREAM_RETRIES.labels(reason.value).inc()
        return delay


def make_retrier(settings: Settings) -> Retrier | None:
    """The gateway's Retrier, or None when retries are off (each call one request)."""
    policy = RetryPolicy.from_settings(settings)
    return Retrier(policy) if policy.enabled else None
