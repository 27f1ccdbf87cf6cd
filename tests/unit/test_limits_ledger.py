"""Limits the workers keep together: two Limiters on one ledger file act as one (in this
process, as workers 1 and 2; and in two real processes racing for the same bucket), a dead
worker's calls are forgotten, and a call waiting in one worker gets a slot freed in another."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings
from gemini_gateway.server.limits import (
    MAX_CONCURRENT_CALLS,
    NO_SLOT,
    REQUESTS_PER_MINUTE,
    TOKENS_PER_MINUTE,
    Limiter,
    create_ledger,
    open_ledger,
)
from gemini_gateway.server.limits_ledger import REQUESTS_AT, LedgerError, LimitsLedger

WORKERS = 2


def no_deadline() -> float | None:
    return None


def stopped_clock() -> float:
    """A clock that stands still: no bucket refills while a test runs."""
    return 1000.0


def workers(path: Path, settings: Settings) -> tuple[LimitsLedger, Limiter, Limiter]:
    """The supervisor's ledger and two workers' limiters on it."""
    supervisor = create_ledger(path, settings, WORKERS, stopped_clock)
    assert supervisor is not None
    limiters = [
        Limiter.from_settings(
            settings, ledger=open_ledger(path, settings, WORKERS, worker), clock=stopped_clock
        )
        for worker in (1, 2)
    ]
    return supervisor, limiters[0], limiters[1]


async def refused_by(limiter: Limiter, generate: bool = True) -> str:
    with pytest.raises(errors.UpstreamError) as caught:
        await limiter.admit(limiter.projects["default"], no_deadline, generate)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    failure = error_details_pb2.QuotaFailure()
    assert caught.value.details[1].Unpack(failure)
    return failure.violations[0].quota_id


def test_no_ledger_without_a_limit_to_share(tmp_path: Path) -> None:
    assert create_ledger(tmp_path / "ledger", Settings(max_connections=8), WORKERS) is None
    assert not (tmp_path / "ledger").exists()


async def test_requests_per_minute_hold_across_the_workers(tmp_path: Path) -> None:
    _, one, two = workers(tmp_path / "ledger", Settings(requests_per_minute=5))
    admitted = []
    for limiter in (one, two, one, two, two):
        admitted.append(await limiter.admit(limiter.projects["default"], no_deadline))
    assert admitted == [NO_SLOT] * 5
    assert await refused_by(one) == REQUESTS_PER_MINUTE
    assert await refused_by(two) == REQUESTS_PER_MINUTE


async def test_tokens_spent_in_one_worker_refuse_the_other(tmp_path: Path) -> None:
    _, one, two = workers(tmp_path / "ledger", Settings(tokens_per_minute=1000))
    call = await one.admit(one.projects["default"], no_deadline)
    one.release(one.projects["default"], call, tokens=1000)
    assert await refused_by(two) == TOKENS_PER_MINUTE
    # Calls that use no tokens pass.
    assert await two.admit(two.projects["default"], no_deadline, generate=False) == NO_SLOT


async def test_concurrent_calls_count_in_every_worker(tmp_path: Path) -> None:
    _, one, two = workers(tmp_path / "ledger", Settings(max_concurrent_calls=3))
    a = await one.admit(one.projects["default"], no_deadline)
    b = await two.admit(two.projects["default"], no_deadline)
    c = await two.admit(two.projects["default"], no_deadline)
    assert await refused_by(one) == MAX_CONCURRENT_CALLS
    assert one.projects["default"].calls_everywhere() == 3
    assert one.projects["default"].in_flight == 1  # its own
    two.release(two.projects["default"], b)
    d = await one.admit(one.projects["default"], no_deadline)
    assert await refused_by(two) == MAX_CONCURRENT_CALLS
    for limiter, call in ((one, a), (two, c), (one, d)):
        limiter.release(limiter.projects["default"], call)
    assert two.projects["default"].calls_everywhere() == 0


async def test_a_dead_workers_calls_are_forgotten(tmp_path: Path) -> None:
    settings = Settings(max_concurrent_calls=2)
    supervisor, one, two = workers(tmp_path / "ledger", settings)
    await one.admit(one.projects["default"], no_deadline)
    await one.admit(one.projects["default"], no_deadline)
    assert await refused_by(two) == MAX_CONCURRENT_CALLS
    supervisor.forget(1)  # worker 1 died holding both
    await two.admit(two.projects["default"], no_deadline)
    await two.admit(two.projects["default"], no_deadline)
    assert two.projects["default"].calls_everywhere() == 2
    # A worker started in place of worker 2 forgets whatever its column held, too.
    replacement = open_ledger(tmp_path / "ledger", settings, WORKERS, 2)
    assert (
        Limiter.from_settings(settings, ledger=replacement).projects["default"].calls_everywhere()
        == 0
    )


async def test_a_waiting_call_gets_a_slot_freed_by_another_worker(tmp_path: Path) -> None:
    settings = Settings(max_concurrent_calls=1, limit_wait_s=0.5)
    _, one, two = workers(tmp_path / "ledger", settings)
    held = await one.admit(one.projects["default"], no_deadline)
    waiting = asyncio.create_task(two.admit(two.projects["default"], no_deadline))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    one.release(one.projects["default"], held)  # worker 1 cannot hand it to worker 2's line
    call = await asyncio.wait_for(waiting, 1)
    assert two.projects["default"].in_flight == 1
    assert await refused_by(one) == MAX_CONCURRENT_CALLS
    two.release(two.projects["default"], call)


async def test_a_waiting_call_gives_up_at_its_budget(tmp_path: Path) -> None:
    settings = Settings(max_concurrent_calls=1, limit_wait_s=0.1, requests_per_minute=100)
    _, one, two = workers(tmp_path / "ledger", settings)
    await one.admit(one.projects["default"], no_deadline)
    assert await refused_by(two) == MAX_CONCURRENT_CALLS
    # The refused call's request was given back to the shared bucket.
    assert one.projects["default"].requests is not None
    assert one.projects["default"].requests.level() == 99


def test_a_ledger_of_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    create_ledger(path, Settings(requests_per_minute=5), WORKERS)
    with pytest.raises(LedgerError, match="not the"):
        open_ledger(path, Settings(requests_per_minute=5), 3, 1)
    with pytest.raises(ValueError, match="not one of"):
        open_ledger(path, Settings(requests_per_minute=5), WORKERS, 3)


RACER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gemini_gateway.server import errors
    from gemini_gateway.server.config import Settings
    from gemini_gateway.server.limits import Limiter, open_ledger

    path, worker, tries = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    settings = Settings(requests_per_minute=int(sys.argv[4]), max_concurrent_calls=1000)
    limiter = Limiter.from_settings(
        settings, clock=lambda: 1000.0, ledger=open_ledger(path, settings, 2, worker)
    )
    project = limiter.projects["default"]

    async def race() -> int:
        sys.stdin.readline()  # both start together
        admitted = 0
        for _ in range(tries):
            try:
                call = await limiter.admit(project, lambda: None, False)
            except errors.UpstreamError:
                continue
            limiter.release(project, call)
            admitted += 1
        return admitted

    print(asyncio.run(race()))
    """
)


def test_two_processes_racing_take_exactly_the_bucket(tmp_path: Path) -> None:
    """Without the lock, their read-modify-writes of one bucket lose updates."""
    path, tries, capacity = tmp_path / "ledger", 20_000, 30_000
    ledger = LimitsLedger.create(path, {"default": (capacity, 0)}, WORKERS, stopped_clock)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(worker), str(tries), str(capacity)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for worker in (1, 2)
    ]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    admitted = [int(racer.communicate(timeout=60)[0]) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    assert sum(admitted) == capacity
    assert all(admitted), admitted  # both took part
    assert ledger.bucket_state("default", REQUESTS_AT)[0] == 0.0
    assert list(ledger.call_counts("default")) == [0.0, 0.0]  # every slot given back
