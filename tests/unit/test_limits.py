"""Per-project limits: the token bucket, slot and pool accounting, the refusal's details, and
the interceptor's pass-through when there is nothing to limit."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.app import build_route_table
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import CallerDirectory, token_sha256
from gemini_gateway.server.limits import (
    MAX_CONCURRENT_CALLS,
    NO_SLOT,
    REJECTIONS,
    REQUESTS_PER_MINUTE,
    TOKENS_PER_MINUTE,
    UPSTREAM_POOL,
    Limiter,
    LimitsInterceptor,
    ProjectLimiter,
    ProjectLimits,
    TokenBucket,
    project_limits,
)

GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def no_deadline() -> float | None:
    return None


def project(name: str, token: str = "", **limits: int) -> ProjectConfig:
    callers = [CallerConfig(name=f"{name}-caller", token_sha256=token_sha256(token or name * 3))]
    return ProjectConfig(callers=callers, **limits)  # type: ignore[arg-type]


def details_of(error: errors.UpstreamError) -> tuple[float, error_details_pb2.QuotaFailure]:
    """(RetryInfo's delay in seconds, the QuotaFailure) of a refusal."""
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert [d.type_url.rpartition(".")[2] for d in error.details] == ["RetryInfo", "QuotaFailure"]
    assert error.details[0].Unpack(retry) and error.details[1].Unpack(quota)
    return retry.retry_delay.ToNanoseconds() / 1e9, quota


def rejections(project_name: str, limit: str) -> float:
    return REJECTIONS.labels(project_name, limit)._value.get()


# --- the token bucket --------------------------------------------------------------------


def test_bucket_starts_full_and_refills_continuously() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock=clock)  # one a second
    assert all(bucket.take() == 0.0 for _ in range(60))  # a whole minute's worth at once
    assert bucket.take() == pytest.approx(1.0)  # refused, nothing taken
    clock.advance(0.25)
    assert bucket.wait_s() == pytest.approx(0.75)
    clock.advance(0.75)
    assert bucket.take() == 0.0
    clock.advance(3600)
    assert bucket.level() == 60  # never above capacity


def test_bucket_debt_is_bounded_by_one_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(600, clock=clock)  # ten a second
    bucket.spend(250)
    assert bucket.level() == 350
    bucket.spend(10_000)  # one huge call
    assert bucket.level() == -600
    assert bucket.wait_s(1) == pytest.approx(60.1)  # back to one token in about a minute
    clock.advance(60)
    assert bucket.level() == pytest.approx(0)


def test_bucket_give_back_is_capped() -> None:
    bucket = TokenBucket(2, clock=Clock())
    assert bucket.take() == 0.0
    bucket.give_back()
    bucket.give_back()
    assert bucket.level() == 2


def test_bucket_rejects_a_non_positive_capacity() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


# --- which limits each project gets ------------------------------------------------------


def test_project_settings_override_the_gateway_defaults() -> None:
    settings = Settings(
        max_concurrent_calls=10,
        requests_per_minute=600,
        tokens_per_minute=0,
        projects={
            "a": project("a", max_concurrent_calls=3, tokens_per_minute=1000),
            "b": project("b", requests_per_minute=0),  # 0: no limit, whatever the default
        },
    )
    limits = project_limits(settings)
    assert limits["a"].max_concurrent_calls == 3
    assert limits["a"].requests_per_minute == 600
    assert limits["a"].tokens_per_minute == 1000
    assert limits["a"].setting(MAX_CONCURRENT_CALLS) == "projects.a.max_concurrent_calls"
    assert limits["a"].setting(REQUESTS_PER_MINUTE) == "requests_per_minute"
    assert limits["b"].max_concurrent_calls == 10
    assert limits["b"].requests_per_minute == 0
    assert limits["b"].setting(REQUESTS_PER_MINUTE) == "projects.b.requests_per_minute"


def test_reservations_split_the_reserved_share_equally() -> None:
    three = {name: project(name) for name in ("a", "b", "c")}
    limits = project_limits(Settings(max_connections=256, projects=three))
    assert {p.reserved_calls for p in limits.values()} == {42}  # floor(256 * 0.5 / 3)
    three["c"] = project("c", max_concurrent_calls=5)
    assert project_limits(Settings(max_connections=256, projects=three))["c"].reserved_calls == 5
    none = project_limits(Settings(reserved_pool_share=0, projects=three))
    assert {p.reserved_calls for p in none.values()} == {0}


def test_one_project_or_development_mode_reserves_nothing() -> None:
    assert project_limits(Settings())["default"] == ProjectLimits(
        settings=project_limits(Settings())["default"].settings
    )
    alone = project_limits(Settings(projects={"a": project("a")}))
    assert alone["a"].reserved_calls == 0
    # Nothing to limit: no live limiter at all.
    assert Limiter.from_settings(Settings(projects={"a": project("a")})).projects == {}


# --- slots --------------------------------------------------------------------------------


async def test_concurrency_cap_refuses_with_retry_info_and_quota_failure() -> None:
    clock = Clock()
    limiter = Limiter({"a": ProjectLimits(max_concurrent_calls=2)}, pool_size=256, clock=clock)
    a = limiter.projects["a"]
    first = await limiter.admit(a, no_deadline)
    clock.advance(4)
    await limiter.admit(a, no_deadline)
    before = rejections("a", MAX_CONCURRENT_CALLS)
    with pytest.raises(errors.UpstreamError) as refused:
        await limiter.admit(a, no_deadline)
    error = refused.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'a'" in error.message and "2 concurrent upstream calls" in error.message
    assert "max_concurrent_calls" in error.message
    delay, quota = details_of(error)
    # No call has ended yet: the oldest (4 s old) is expected to end after the default 1 s.
    assert delay == pytest.approx(0.5)  # past due: mean / calls in flight
    (violation,) = quota.violations
    assert violation.subject == "projects/a"
    assert violation.quota_id == MAX_CONCURRENT_CALLS
    assert violation.quota_value == 2
    assert violation.quota_dimensions["project"] == "a"
    assert rejections("a", MAX_CONCURRENT_CALLS) == before + 1
    limiter.release(a, first)
    assert a.in_flight == 1
    await limiter.admit(a, no_deadline)  # the freed slot


async def test_retry_delay_follows_the_mean_call_duration() -> None:
    clock = Clock()
    limiter = Limiter({"a": ProjectLimits(max_concurrent_calls=1)}, pool_size=256, clock=clock)
    a = limiter.projects["a"]
    call = await limiter.admit(a, no_deadline)
    clock.advance(3)
    limiter.release(a, call)  # calls take 3 s
    await limiter.admit(a, no_deadline)
    clock.advance(1)
    with pytest.raises(errors.UpstreamError) as refused:
        await limiter.admit(a, no_deadline)
    assert details_of(refused.value)[0] == pytest.approx(2.0)  # the running call ends in 2 s
    assert "retry in 2 s" in refused.value.message


async def test_a_call_refused_for_a_slot_costs_no_request() -> None:
    clock = Clock()
    limiter = Limiter(
        {"a": ProjectLimits(max_concurrent_calls=1, requests_per_minute=2)}, 256, clock=clock
    )
    a = limiter.projects["a"]
    call = await limiter.admit(a, no_deadline)
    with pytest.raises(errors.UpstreamError):
        await limiter.admit(a, no_deadline)
    limiter.release(a, call)
    await limiter.admit(a, no_deadline)  # the second request of the minute, not the third
    assert a.requests is not None and a.requests.level() == 0


async def test_requests_per_minute() -> None:
    clock = Clock()
    limiter = Limiter({"a": ProjectLimits(requests_per_minute=3)}, 256, clock=clock)
    a = limiter.projects["a"]
    assert [await limiter.admit(a, no_deadline) for _ in range(3)] == [NO_SLOT] * 3
    with pytest.raises(errors.UpstreamError) as refused:
        await limiter.admit(a, no_deadline)
    delay, quota = details_of(refused.value)
    assert delay == pytest.approx(20.0)  # one request every 20 s
    assert quota.violations[0].quota_id == REQUESTS_PER_MINUTE
    assert "3 requests per minute" in refused.value.message
    clock.advance(20)
    await limiter.admit(a, no_deadline)


async def test_tokens_are_charged_after_the_call() -> None:
    clock = Clock()
    limiter = Limiter({"a": ProjectLimits(tokens_per_minute=600)}, 256, clock=clock)
    a = limiter.projects["a"]
    calls = [await limiter.admit(a, no_deadline) for _ in range(3)]  # none charged yet
    for call in calls:
        limiter.release(a, call, tokens=250)
    with pytest.raises(errors.UpstreamError) as refused:
        await limiter.admit(a, no_deadline)
    delay, quota = details_of(refused.value)
    assert delay == pytest.approx(15.1)  # from -150 to 1 at 10 tokens a second
    assert quota.violations[0].quota_id == TOKENS_PER_MINUTE
    await limiter.admit(a, no_deadline, generate=False)  # uses no tokens: never refused for them
    clock.advance(16)
    await limiter.admit(a, no_deadline)


# --- the shared pool ---------------------------------------------------------------------


def pool_limiter(clock: Clock, size: int = 8) -> Limiter:
    settings = Settings(max_connections=size, projects={"a": project("a"), "b": project("b")})
    return Limiter(project_limits(settings), size, clock=clock)


async def test_a_project_borrows_shared_slots_but_never_another_reservation() -> None:
    clock = Clock()
    limiter = pool_limiter(clock)  # 8 slots: 2 reserved for each of a and b, 4 shared
    a, b = limiter.projects["a"], limiter.projects["b"]
    assert (a.reserved, b.reserved) == (2, 2)
    a_calls = [await limiter.admit(a, no_deadline) for _ in range(6)]
    with pytest.raises(errors.UpstreamError) as refused:
        await limiter.admit(a, no_deadline)
    assert details_of(refused.value)[1].violations[0].quota_id == UPSTREAM_POOL
    assert "reserved_pool_share" in refused.value.message
    b_calls = [await limiter.admit(b, no_deadline) for _ in range(2)]  # b's reservation
    with pytest.raises(errors.UpstreamError):
        await limiter.admit(b, no_deadline)  # nothing shared is left
    limiter.release(a, a_calls.pop())
    b_calls.append(await limiter.admit(b, no_deadline))  # a shared slot, freed by a
    with pytest.raises(errors.UpstreamError):
        await limiter.admit(a, no_deadline)
    assert limiter.pool is not None
    assert limiter.pool.in_use == 8 and limiter.pool.kept == 0


async def test_pool_accounting_holds_under_random_traffic() -> None:
    clock = Clock()
    settings = Settings(
        max_connections=10,
        projects={
            "a": project("a"),
            "b": project("b", max_concurrent_calls=1),
            "c": project("c", max_concurrent_calls=6),
        },
    )
    limiter = Limiter(project_limits(settings), 10, clock=clock)
    pool = limiter.pool
    assert pool is not None
    held: list[tuple[ProjectLimiter, int]] = []
    rng = random.Random(7)
    for _ in range(2000):
        clock.advance(rng.random())
        if held and rng.random() < 0.45:
            owner, call = held.pop(rng.randrange(len(held)))
            limiter.release(owner, call)
        else:
            who = limiter.projects[rng.choice("abc")]
            try:
                held.append((who, await limiter.admit(who, no_deadline)))
            except errors.UpstreamError:
                # Refused only when the project is at its cap or has no free slot of its own
                # and nothing shared is free.
                assert who.in_flight >= who.reserved
                assert (who.max_calls and who.in_flight >= who.max_calls) or pool.shared_free() == 0
        unused = sum(max(0, p.reserved - p.in_flight) for p in limiter.projects.values())
        assert pool.kept == unused
        assert pool.in_use == len(held) == sum(p.in_flight for p in limiter.projects.values())
        assert pool.in_use + pool.kept <= pool.size
        assert all(p.in_flight <= p.max_calls for p in limiter.projects.values() if p.max_calls)


# --- waiting for a slot ------------------------------------------------------------------


async def test_a_call_waits_for_a_slot_at_most_limit_wait_s() -> None:
    limiter = Limiter({"a": ProjectLimits(max_concurrent_calls=1)}, 256, wait_s=5.0)
    a = limiter.projects["a"]
    first = await limiter.admit(a, no_deadline)
    waiting = asyncio.ensure_future(limiter.admit(a, no_deadline))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    limiter.release(a, first)  # handed straight to the waiting call
    second = await asyncio.wait_for(waiting, 1)
    assert a.in_flight == 1
    # The call's own deadline bounds the wait too.
    with pytest.raises(errors.UpstreamError) as refused:
        await limiter.admit(a, lambda: 0.05)
    assert details_of(refused.value)[1].violations[0].quota_id == MAX_CONCURRENT_CALLS
    limiter.release(a, second)
    assert a.in_flight == 0 and not limiter._waiters


async def test_a_caller_that_goes_away_while_waiting_leaves_no_slot_behind() -> None:
    limiter = Limiter(
        {"a": ProjectLimits(max_concurrent_calls=1, requests_per_minute=10)}, 256, wait_s=5.0
    )
    a = limiter.projects["a"]
    first = await limiter.admit(a, no_deadline)
    waiting = asyncio.ensure_future(limiter.admit(a, no_deadline))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    limiter.release(a, first)
    assert a.in_flight == 0
    assert a.requests is not None and a.requests.level() == pytest.approx(9, abs=0.01)


# --- the interceptor ---------------------------------------------------------------------


class Details:
    """grpc.HandlerCallDetails as grpc.aio hands it to an interceptor."""

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def intercepted(interceptor: LimitsInterceptor, details: Details) -> tuple[Any, Any]:
    async def behaviour(request: Any, context: Any) -> Any:
        return request

    handler: Any = grpc.unary_unary_rpc_method_handler(behaviour)

    async def continuation(_: Any) -> Any:
        return handler

    return handler, await interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]


async def test_nothing_to_limit_returns_every_handler_unchanged() -> None:
    for settings in (Settings(), Settings(projects={"a": project("a")})):
        interceptor = LimitsInterceptor(settings, CallerDirectory(settings))
        assert not interceptor.active
        handler, returned = await intercepted(interceptor, Details(GENERATE))
        assert returned is handler


async def test_only_forwarded_calls_of_limited_projects_are_wrapped() -> None:
    settings = Settings(
        projects={"a": project("a", "token-a", requests_per_minute=5), "b": project("b")},
        reserved_pool_share=0,
    )
    interceptor = LimitsInterceptor(settings, CallerDirectory(settings), build_route_table())
    as_a = (("authorization", "Bearer token-a"),)
    handler, returned = await intercepted(interceptor, Details(GENERATE, as_a))
    assert returned is not handler
    for details in (
        Details("/grpc.health.v1.Health/Check", as_a),  # not forwarded
        Details(GENERATE, (("authorization", "Bearer bbbbbbbbb"),)),  # b has no limits
        Details(GENERATE),  # no token: the forwarder answers UNAUTHENTICATED
        Details(GENERATE, (("authorization", "Bearer unknown"),)),
    ):
        handler, returned = await intercepted(interceptor, details)
        assert returned is handler, details.method


class CertificateContext:
    """What the interceptor reads of a grpc.aio.ServicerContext for an mTLS caller."""

    def __init__(self, subject: str) -> None:
        self._subject = subject
        self.aborted: tuple[Any, ...] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_subject": [self._subject.encode()]}

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, message: str, trailers: Any) -> None:
        self.aborted = (code, message, trailers)
        raise RuntimeError("aborted")


async def test_a_caller_known_by_its_certificate_is_limited_too() -> None:
    settings = Settings(
        projects={
            "a": ProjectConfig(
                callers=[CallerConfig(name="api", tls_subject="CN=api,O=Example")],  # type: ignore[call-arg]
                max_concurrent_calls=1,
            ),
            "b": project("b"),
        },
        reserved_pool_share=0,
    )
    interceptor = LimitsInterceptor(settings, CallerDirectory(settings), build_route_table())
    a = interceptor.limiter.projects["a"]
    seen: list[int] = []

    async def behaviour(request: Any, context: Any) -> Any:
        seen.append(a.in_flight)
        return request

    async def continuation(_: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behaviour)

    wrapped: Any = await interceptor.intercept_service(continuation, Details(GENERATE))  # type: ignore[arg-type]
    # The behaviour hands back what it gets: an answer, with its usage.
    request = generative_service_pb2.GenerateContentResponse()
    assert await wrapped.unary_unary(request, CertificateContext("CN=api,O=Example")) is request
    assert seen == [1] and a.in_flight == 0
    # An unknown certificate passes untouched: the forwarder refuses it.
    assert await wrapped.unary_unary(request, CertificateContext("CN=other")) is request
    assert seen == [1, 0]


async def test_a_stream_that_writes_its_messages_is_limited_too() -> None:
    settings = Settings(max_concurrent_calls=1)
    interceptor = LimitsInterceptor(settings, CallerDirectory(settings), build_route_table())
    project_ = interceptor.limiter.projects["default"]
    seen: list[int] = []

    async def writes(request: Any, context: Any) -> None:  # as Health.Watch does
        seen.append(project_.in_flight)

    async def continuation(_: Any) -> Any:
        return grpc.unary_stream_rpc_method_handler(writes)

    stream = "/google.ai.generativelanguage.v1beta.GenerativeService/StreamGenerateContent"
    wrapped: Any = await interceptor.intercept_service(continuation, Details(stream))  # type: ignore[arg-type]
    await wrapped.unary_stream(b"", CertificateContext("CN=nobody"))
    assert seen == [1] and project_.in_flight == 0
