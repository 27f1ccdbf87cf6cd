"""Per-project limits on forwarded calls, enforced by one gRPC server interceptor.

Each project (the `default` project in development mode) may have, docs/limits.md says how
to set them:

- `max_concurrent_calls`: slots for calls in flight. A call that finds none free waits for one
  at most `limit_wait_s` (0, the default: not at all) and is otherwise refused, never queued
  silently.
- `requests_per_minute`: a token bucket holding a minute's worth of requests, refilled
  continuously; a burst of a whole minute's worth passes at once.
- `tokens_per_minute`: a token bucket of tokens, debited when a generate call ends by the
  `totalTokenCount` its answer reports (a stream: the last usage it sent). Tokens are known
  only after the call, so a generate call is admitted while the bucket holds at least one
  token, and may leave it in debt; the debt is at most one minute's worth, so one huge call
  keeps its project refused for about a minute at most. Other calls use no tokens and are
  never refused by this limit.
- a fair share of the upstream pool (`max_connections`): with two or more projects
  configured, `reserved_pool_share` of the pool is divided into equal reservations, one per
  project; the rest is shared. A project always gets its own reserved slots; beyond them it
  takes a shared slot only while the slots reserved for the others that they are not using
  stay free. So slow calls of one project fill at most the shared slots and its own, and
  every other project always finds its reservation free.

The workers of one gateway (`workers` of 2 or more) keep the limits together, in a
LimitsLedger (limits_ledger.py) the supervisor makes: a project's buckets and its calls in
flight are the same in every worker. Its shares of the upstream pool stay per worker, as
each worker has its own pool.

Every call to a forwarded method counts, whatever becomes of it upstream, and holds its slot
until it ends (a stream: its last message). A refused call costs its project nothing (no
request, no slot, no tokens); it ends with RESOURCE_EXHAUSTED carrying google.rpc.RetryInfo
(when the limit should free, best estimate) and google.rpc.QuotaFailure (the limit, the
setting, the project) in grpc-status-details-bin, and is counted in
`gateway_limit_rejections_total{project,limit}`, whose label values come from the
configuration only (configured project names, or `default`; four limit names).

With nothing to limit (no limit set, fewer than two projects or no reserve) the interceptor
returns every handler unchanged. It goes after the metrics interceptor, so that the metrics
count a refused call as the RESOURCE_EXHAUSTED its caller saw:

    grpc.aio.server(interceptors=[MetricsInterceptor(), LimitsInterceptor(settings, callers)])
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2
from prometheus_client import Counter

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings
from gemini_gateway.server.identity import DEFAULT_PROJECT, CallerDirectory
from gemini_gateway.server.limits_ledger import (
    POLL_S,
    REQUESTS_AT,
    TOKENS_AT,
    LimitsLedger,
)
from gemini_gateway.server.metering import GENERATE_REQUESTS

if TYPE_CHECKING:
    from gemini_gateway.server.routes import RouteTable

Clock = Callable[[], float]

# The limits, as the metric's `limit` label and QuotaFailure's quota_id name them.
MAX_CONCURRENT_CALLS = "max_concurrent_calls"
REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
UPSTREAM_POOL = "upstream_pool"
RATE_LIMITS = (MAX_CONCURRENT_CALLS, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE)

MINUTE_S = 60.0
# Retry delays told to callers are rounded up to milliseconds and kept within these bounds.
MIN_RETRY_DELAY_S = 0.01
MAX_RETRY_DELAY_S = 2 * MINUTE_S
# How long a call is expected to take before any call of its project has ended, and how
# much each ended call moves the running mean (an exponentially weighted moving average).
DEFAULT_CALL_S = 1.0
MEAN_WEIGHT = 0.2

REJECTIONS = Counter(
    "gateway_limit_rejections",
    "Calls refused with RESOURCE_EXHAUSTED by a per-project limit, by project (a configured "
    "name, or `default` in development mode) and limit (max_concurrent_calls, "
    "requests_per_minute, tokens_per_minute, upstream_pool).",
    ["project", "limit"],
)


class TokenBucket:
    """`capacity` tokens, refilled continuously at `capacity` per `period_s`; full at first.

    `take` is all or nothing. `spend` charges what is known only afterwards (the tokens of
    a call that has ended) and may leave the bucket in debt, at most `capacity` deep.
    `state` is [level, stamp]: the bucket's own, or cells of a LimitsLedger that the
    workers share (then used only under the ledger's lock).
    """

    __slots__ = ("_clock", "_state", "capacity", "rate")

    def __init__(
        self,
        capacity: float,
        period_s: float = MINUTE_S,
        clock: Clock = time.monotonic,
        state: MutableSequence[float] | None = None,
    ) -> None:
        if capacity <= 0 or period_s <= 0:
            raise ValueError("a token bucket needs a positive capacity and period")
        self.capacity = float(capacity)
        self.rate = self.capacity / period_s  # tokens per second
        self._clock = clock
        self._state = [self.capacity, clock()] if state is None else state

    def level(self) -> float:
        """Tokens there now (negative: debt)."""
        state = self._state
        now = self._clock()
        level, stamp = state[0], state[1]
        if now > stamp:
            level = min(self.capacity, level + (now - stamp) * self.rate)
            state[0] = level
            state[1] = now
        return level

    def wait_s(self, amount: float = 1.0) -> float:
        """Seconds until `amount` tokens are there; 0.0 when they are now."""
        missing = amount - self.level()
        return missing / self.rate if missing > 0 else 0.0

    def take(self, amount: float = 1.0) -> float:
        """Take `amount` tokens and return 0.0; or, when there are fewer, take none and
        return the seconds until there are enough."""
        wait = self.wait_s(amount)
        if wait == 0.0:
            self._state[0] -= amount
        return wait

    def give_back(self, amount: float = 1.0) -> None:
        """Return tokens taken for something that did not happen."""
        self._state[0] = min(self.capacity, self._state[0] + amount)

    def spend(self, amount: float) -> None:
        """Charge `amount` after the fact, into debt if need be (never below -capacity)."""
        self._state[0] = max(-self.capacity, self.level() - amount)


class UpstreamPool:
    """The upstream connection pool as the limits share it among projects.

    `in_use`: slots held by limited calls; `kept`: reserved slots their projects are not
    using, which no other project may take. Always `in_use + kept <= size`.
    """

    __slots__ = ("in_use", "kept", "mean_s", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self.kept = 0
        self.mean_s = DEFAULT_CALL_S

    def shared_free(self) -> int:
        """Slots a project past its own reservation may still take."""
        return self.size - self.in_use - self.kept


@dataclass(frozen=True)
class ProjectLimits:
    """One project's limits as configured (0: no limit), and the setting behind each."""

    max_concurrent_calls: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    reserved_calls: int = 0  # its reservation in the upstream pool
    settings: Mapping[str, str] = field(default_factory=dict)  # limit -> setting name

    def setting(self, limit: str) -> str:
        return self.settings.get(limit, limit)


def project_limits(settings: Settings) -> dict[str, ProjectLimits]:
    """Every project's limits: its own settings, else the gateway-wide ones; with two or more
    projects configured, each reserves an equal part of `reserved_pool_share` of the pool."""
    configured = settings.projects
    reserve_each = 0
    if len(configured) >= 2:
        reserve_each = math.floor(
            settings.max_connections * settings.reserved_pool_share / len(configured)
        )
    result = {}
    for name in configured or [DEFAULT_PROJECT]:
        project = configured.get(name)
        values: dict[str, int] = {}
        where = {UPSTREAM_POOL: "reserved_pool_share"}
        for limit in RATE_LIMITS:
            own = getattr(project, limit, None) if project is not None else None
            values[limit] = getattr(settings, limit) if own is None else own
            where[limit] = limit if own is None else f"projects.{name}.{limit}"
        cap = values[MAX_CONCURRENT_CALLS]
        reserved = min(reserve_each, cap) if cap else reserve_each
        result[name] = ProjectLimits(
            max_concurrent_calls=cap,
            requests_per_minute=values[REQUESTS_PER_MINUTE],
            tokens_per_minute=values[TOKENS_PER_MINUTE],
            reserved_calls=reserved,
            settings=where,
        )
    return result


def create_ledger(
    path: Path, settings: Settings, workers: int, clock: Clock = time.monotonic
) -> LimitsLedger | None:
    """The ledger in which `workers` processes keep the configured limits together, made at
    `path`; None when no project has a limit to share (the pool's shares stay per worker)."""
    every = project_limits(settings)
    if not any(getattr(limits, limit) for limits in every.values() for limit in RATE_LIMITS):
        return None
    capacities = {
        name: (limits.requests_per_minute, limits.tokens_per_minute)
        for name, limits in every.items()
    }
    return LimitsLedger.create(path, capacities, workers, clock)


def open_ledger(path: Path, settings: Settings, workers: int, worker: int) -> LimitsLedger:
    """Worker `worker`'s view of the ledger create_ledger made, its own calls forgotten (those
    of the process it replaces, if any)."""
    ledger = LimitsLedger(path, sorted(project_limits(settings)), workers, worker)
    ledger.forget(worker)
    return ledger


class ProjectLimiter:
    """The live state of one project's limits: its buckets, slots and calls in flight.

    With a `ledger`, the buckets and the count of calls in flight against
    `max_concurrent_calls` are the ones every worker shares; `in_flight`, the pool's
    accounting and the estimates of when a slot frees stay this process's own.
    """

    def __init__(
        self,
        name: str,
        limits: ProjectLimits,
        pool: UpstreamPool | None,
        clock: Clock,
        ledger: LimitsLedger | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.max_calls = limits.max_concurrent_calls
        self.pool = pool
        self.reserved = limits.reserved_calls if pool is not None else 0
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        requests_state = tokens_state = None
        # Every worker's calls in flight, and which of them are this one's.
        self._shared_calls: MutableSequence[float] | None = None
        self._own = 0
        if ledger is not None:
            requests_state = ledger.bucket_state(name, REQUESTS_AT)
            tokens_state = ledger.bucket_state(name, TOKENS_AT)
            self._shared_calls = ledger.call_counts(name)
            self._own = ledger.worker - 1
        self.requests = TokenBucket(rpm, clock=clock, state=requests_state) if rpm else None
        self.tokens = TokenBucket(tpm, clock=clock, state=tokens_state) if tpm else None
        self.counts_slots = bool(self.max_calls) or pool is not None
        self.in_flight = 0
        self._started: dict[int, float] = {}  # call id -> start, oldest first
        self._mean_s: float | None = None  # of this project's calls

    @property
    def active(self) -> bool:
        return self.counts_slots or self.requests is not None or self.tokens is not None

    def calls_everywhere(self) -> int:
        """The project's calls in flight in every worker (with no ledger: in this process)."""
        shared = self._shared_calls
        return self.in_flight if shared is None else int(sum(shared))

    def slot_refusal(self) -> str | None:
        """The limit that keeps this project from another slot now; None when it may."""
        if self.max_calls and self.calls_everywhere() >= self.max_calls:
            return MAX_CONCURRENT_CALLS
        pool = self.pool
        if pool is not None and self.in_flight >= self.reserved and pool.shared_free() <= 0:
            return UPSTREAM_POOL
        return None

    def take_slot(self, call_id: int, now: float) -> None:
        pool = self.pool
        if pool is not None:
            if self.in_flight < self.reserved:
                pool.kept -= 1
            pool.in_use += 1
        self.in_flight += 1
        if self._shared_calls is not None:
            self._shared_calls[self._own] += 1
        self._started[call_id] = now

    def release_slot(self, call_id: int, now: float) -> None:
        elapsed = now - self._started.pop(call_id)
        self.in_flight -= 1
        if self._shared_calls is not None:
            self._shared_calls[self._own] = max(0.0, self._shared_calls[self._own] - 1)
        mean = self._mean_s
        self._mean_s = elapsed if mean is None else mean + MEAN_WEIGHT * (elapsed - mean)
        pool = self.pool
        if pool is not None:
            pool.in_use -= 1
            if self.in_flight < self.reserved:
                pool.kept += 1
            pool.mean_s += MEAN_WEIGHT * (elapsed - pool.mean_s)

    def slot_wait_s(self, limit: str, now: float) -> float:
        """Best estimate of when a slot frees: the oldest call's expected end (by the running
        mean of call durations); once that is past, the mean over the calls in flight."""
        if limit == UPSTREAM_POOL and self.pool is not None:
            pool = self.pool
            return pool.mean_s / max(1, pool.in_use)
        mean = DEFAULT_CALL_S if self._mean_s is None else self._mean_s
        if self._started:
            remaining = next(iter(self._started.values())) + mean - now
            if remaining > 0:
                return remaining
        return mean / max(1, self.in_flight)


@dataclass(eq=False)
class _Waiter:
    project: ProjectLimiter
    call_id: int
    future: asyncio.Future[None]


NO_SLOT = 0  # the call id of an admitted call that holds no slot


class _Unshared:
    """The lock of limits kept in one process: none is needed (one event loop thread)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


class Limiter:
    """All projects' limits: admits calls, or refuses them with the error their caller gets.

    With a `ledger` (several workers), the limits are the ones the workers keep together:
    each step that reads or changes them holds the ledger's lock, and calls waiting for a
    slot look every POLL_S for one freed by another worker.
    """

    def __init__(
        self,
        limits: Mapping[str, ProjectLimits],
        pool_size: int,
        wait_s: float = 0.0,
        clock: Clock = time.monotonic,
        ledger: LimitsLedger | None = None,
    ) -> None:
        self._clock = clock
        self._wait_s = wait_s
        self._lock: LimitsLedger | _Unshared = _Unshared() if ledger is None else ledger
        self._shared = ledger is not None
        reserving = any(project.reserved_calls for project in limits.values())
        self.pool = UpstreamPool(pool_size) if reserving else None
        self.projects: dict[str, ProjectLimiter] = {}
        for name, project_limits_ in limits.items():
            limiter = ProjectLimiter(name, project_limits_, self.pool, clock, ledger)
            if limiter.active:
                self.projects[name] = limiter
                if self.pool is not None:
                    self.pool.kept += limiter.reserved
        self._ids = itertools.count(NO_SLOT + 1)
        self._waiters: deque[_Waiter] = deque()
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        clock: Clock = time.monotonic,
        ledger: LimitsLedger | None = None,
    ) -> Limiter:
        return cls(
            project_limits(settings),
            settings.max_connections,
            settings.limit_wait_s,
            clock,
            ledger,
        )

    async def admit(
        self,
        project: ProjectLimiter,
        time_remaining: Callable[[], float | None],
        generate: bool = True,
    ) -> int:
        """Admit one call of `project`: returns its call id, for `release`. Raises the
        UpstreamError the caller gets when a limit refuses it (having taken nothing).

        `time_remaining`: the call's time left (None: no deadline), read only if it waits.
        `generate`: whether it is a generate call, the only kind the token limit refuses.
        """
        with self._lock:
            call_id, refusal = self._admit_now(project, generate)
        if refusal is None:
            return call_id
        budget = self._wait_s
        if budget > 0:
            remaining = time_remaining()
            if remaining is not None:
                budget = min(budget, remaining)
        try:
            if budget > 0 and await self._wait_for_slot(project, call_id, budget):
                return call_id
        except BaseException:
            self._give_back_request(project)
            raise
        self._give_back_request(project)
        with self._lock:
            refusal = project.slot_refusal() or refusal
        raise self._refused(project, refusal)

    def _admit_now(self, project: ProjectLimiter, generate: bool) -> tuple[int, str | None]:
        """(call id, None) for a call admitted now; (call id, the limit) for one that has
        its request but no slot. Raises the refusal of a bucket that is empty."""
        if generate and project.tokens is not None:
            wait = project.tokens.wait_s(1.0)
            if wait:
                raise self._refused(project, TOKENS_PER_MINUTE, wait)
        if project.requests is not None:
            wait = project.requests.take(1.0)
            if wait:
                raise self._refused(project, REQUESTS_PER_MINUTE, wait)
        if not project.counts_slots:
            return NO_SLOT, None
        call_id = next(self._ids)
        refusal = project.slot_refusal()
        if refusal is None:
            project.take_slot(call_id, self._clock())
        return call_id, refusal

    def _give_back_request(self, project: ProjectLimiter) -> None:
        if project.requests is not None:
            with self._lock:
                project.requests.give_back(1.0)

    async def _wait_for_slot(self, project: ProjectLimiter, call_id: int, budget: float) -> bool:
        """Wait in line for a slot; True once one was handed over."""
        waiter = _Waiter(project, call_id, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        if self._shared and self._poller is None:
            self._poller = asyncio.create_task(self._look_for_slots())
        try:
            async with asyncio.timeout(budget):
                await waiter.future
        except TimeoutError:
            pass
        except BaseException:  # the caller went away: give back a slot handed over meanwhile
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(project, call_id)
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()  # _hand_over skips it and drops it from the line
        return not waiter.future.cancelled()

    async def _look_for_slots(self) -> None:
        """While calls wait, hand them slots that other workers freed."""
        try:
            while self._waiters:
                await asyncio.sleep(POLL_S)
                with self._lock:
                    self._hand_over()
        finally:
            self._poller = None

    def release(self, project: ProjectLimiter, call_id: int, tokens: int = 0) -> None:
        """A call admitted by `admit` ended, having used `tokens` (generate calls)."""
        if call_id == NO_SLOT and not (tokens and project.tokens is not None):
            return
        with self._lock:
            if tokens and project.tokens is not None:
                project.tokens.spend(tokens)
            if call_id == NO_SLOT:
                return
            project.release_slot(call_id, self._clock())
            if self._waiters:
                self._hand_over()

    def _hand_over(self) -> None:
        """Give freed slots to the calls waiting for one, first come first served (a waiter
        whose project still may not have a slot keeps its place)."""
        now = self._clock()
        still: deque[_Waiter] = deque()
        for waiter in self._waiters:
            if waiter.future.done():
                continue  # gave up
            if waiter.project.slot_refusal() is None:
                waiter.project.take_slot(waiter.call_id, now)
                waiter.future.set_result(None)
            else:
                still.append(waiter)
        self._waiters = still

    def _refused(
        self, project: ProjectLimiter, limit: str, wait_s: float | None = None
    ) -> errors.UpstreamError:
        if wait_s is None:
            wait_s = project.slot_wait_s(limit, self._clock())
        REJECTIONS.labels(project.name, limit).inc()
        return limit_exceeded(project, limit, wait_s)


class LimitExceeded(errors.UpstreamError):
    """RESOURCE_EXHAUSTED from a per-project limit; its trailers also carry gRPC's own
    `grpc-retry-pushback-ms`, which a client's gRPC retry policy (gRFC A6) waits for."""

    def __init__(self, message: str, details: tuple[any_pb2.Any, ...], retry_ms: int) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message, details)
        self.retry_ms = retry_ms

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        pushback = (("grpc-retry-pushback-ms", str(self.retry_ms).encode()),)
        return super().trailing_metadata() + pushback


def _retry_text(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def limit_exceeded(project: ProjectLimiter, limit: str, wait_s: float) -> LimitExceeded:
    """RESOURCE_EXHAUSTED naming the limit, its setting and the project, with RetryInfo and
    QuotaFailure details."""
    name = project.name
    setting = project.limits.setting(limit)
    if limit == MAX_CONCURRENT_CALLS:
        value = project.max_calls
        what = f"{value} concurrent upstream calls"
    elif limit == REQUESTS_PER_MINUTE:
        value = project.limits.requests_per_minute
        what = f"{value} requests per minute"
    elif limit == TOKENS_PER_MINUTE:
        value = project.limits.tokens_per_minute
        what = f"{value} tokens per minute"
    else:
        value = project.in_flight
        what = f"its share of the upstream pool, {value} calls in flight"
    if limit == UPSTREAM_POOL:
        problem = (
            f"project {name!r} has {value} upstream calls in flight, its share of the "
            f"upstream pool: the free connections are reserved for other projects "
            f"(setting {setting})"
        )
    else:
        problem = f"project {name!r} is at its limit of {what} (setting {setting})"
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=f"projects/{name}",
        description=f"per-project limit {limit}: {what} (setting {setting})",
        quota_id=limit,
        quota_metric=setting,
        quota_value=value,
        quota_dimensions={"project": name},
    )
    return quota_refusal(problem, violation, wait_s)


E = TypeVar("E", bound=LimitExceeded)


def quota_refusal(
    problem: str,
    violation: error_details_pb2.QuotaFailure.Violation,
    wait_s: float,
    error_class: type[E] = LimitExceeded,  # type: ignore[assignment]
) -> E:
    """RESOURCE_EXHAUSTED saying `problem` and when to retry (`wait_s`, kept within
    MIN/MAX_RETRY_DELAY_S), with RetryInfo and QuotaFailure (`violation`) details."""
    retry_ms = math.ceil(min(MAX_RETRY_DELAY_S, max(MIN_RETRY_DELAY_S, wait_s)) * 1000)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(
            seconds=retry_ms // 1000, nanos=(retry_ms % 1000) * 1_000_000
        )
    )
    quota = error_details_pb2.QuotaFailure(violations=[violation])
    details = []
    for detail in (retry, quota):
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    message = f"{problem}; retry in {_retry_text(retry_ms / 1000)}"
    return error_class(message, tuple(details), retry_ms)


def _tokens(message: Any) -> int:
    """A generate answer's token total (0 when it reports no usage)."""
    return int(message.usage_metadata.total_token_count)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Any]]


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    """Applies the per-project limits to the forwarded methods (those of `routes`, by default
    the gateway's route table); other methods, and calls whose caller is not known (the
    forwarder refuses them), pass untouched.

    A caller with a bearer token is known from the metadata, before the handler is chosen:
    the calls of a project without limits get their handler unchanged. A caller known by
    its client certificate (mTLS) is known only from the call's context, so its calls are
    wrapped and identified as they start.
    """

    def __init__(
        self,
        settings: Settings,
        callers: CallerDirectory,
        routes: RouteTable | None = None,
        *,
        clock: Clock = time.monotonic,
        ledger: LimitsLedger | None = None,
    ) -> None:
        self.limiter = Limiter.from_settings(settings, clock, ledger)
        self._callers = callers
        self.active = bool(self.limiter.projects)
        if routes is None and self.active:
            from gemini_gateway.server.app import build_route_table  # app imports this module

            routes = build_route_table()
        # Forwarded method -> whether it is a generate call (its tokens count).
        self._methods: dict[str, bool] = {
            route.full_method: route.method.input_type.full_name in GENERATE_REQUESTS
            for route in routes or ()
        }

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # grpc's handlers are namedtuples (`_replace`), which its type stubs do not declare.
        handler: Any = await continuation(handler_call_details)
        if not self.active or handler is None:
            return handler
        generate = self._methods.get(handler_call_details.method)
        if generate is None:
            return handler
        project: ProjectLimiter | None = None
        try:
            identity = self._callers.identify(handler_call_details.invocation_metadata or ())
        except errors.UpstreamError:
            if not self._callers.uses_certificates:
                return handler  # UNAUTHENTICATED, from the forwarder
            # Perhaps known by its certificate: identified from the context as it starts.
        else:
            project = self.limiter.projects.get(identity.project)
            if project is None:
                return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(project, handler.unary_unary, generate))
        if handler.unary_stream is not None:
            limited: Callable[..., Any]
            if inspect.isasyncgenfunction(handler.unary_stream):
                limited = self._stream(project, handler.unary_stream, generate)
            else:  # a coroutine that writes its messages: limited, its tokens unseen
                limited = self._unary(project, handler.unary_stream, generate=False)
            return handler._replace(unary_stream=limited)
        return handler

    def _project_of(self, context: grpc.aio.ServicerContext) -> ProjectLimiter | None:
        """The limits of a call's project, from its context; None: none, or no known caller
        (the forwarder refuses it)."""
        try:
            identity = self._callers.identify_call(context)
        except errors.UpstreamError:
            return None
        return self.limiter.projects.get(identity.project)

    def _unary(
        self,
        known: ProjectLimiter | None,
        behaviour: Callable[..., Awaitable[Any]],
        generate: bool,
    ) -> Callable[..., Awaitable[Any]]:
        limiter = self.limiter

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            project = known or self._project_of(context)
            if project is None:
                return await behaviour(request, context)
            try:
                call_id = await limiter.admit(project, context.time_remaining, generate)
            except errors.UpstreamError as exc:
                await context.abort(exc.code, exc.message, exc.trailing_metadata())
            tokens = 0
            try:
                response = await behaviour(request, context)
                if generate:
                    tokens = _tokens(response)
                return response
            finally:
                limiter.release(project, call_id, tokens)

        return limited

    def _stream(
        self,
        known: ProjectLimiter | None,
        behaviour: Callable[..., AsyncIterator[Any]],
        generate: bool,
    ) -> Callable[..., AsyncIterator[Any]]:
        limiter = self.limiter

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            project = known or self._project_of(context)
            if project is None:
                async for message in behaviour(request, context):
                    yield message
                return
            try:
                call_id = await limiter.admit(project, context.time_remaining, generate)
            except errors.UpstreamError as exc:
                await context.abort(exc.code, exc.message, exc.trailing_metadata())
            tokens = 0
            try:
                async for message in behaviour(request, context):
                    if generate and message.HasField("usage_metadata"):
                        tokens = _tokens(message)  # the last one holds the totals
                    yield message
            finally:
                limiter.release(project, call_id, tokens)

        return limited
