"""LogBus: the ids of committed logs reach the tail subscribers of their project.

In one process on SQLite and PostgreSQL (the `store` fixture), and across two buses sharing a
PostgreSQL database through LISTEN/NOTIFY (two stores opened on one fresh database, as two
replicas would), including a listen connection that the server terminates.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import sqlalchemy as sa

from gemini_gateway.server.log_event import new_log_id
from gemini_gateway.server.log_tail import (
    APPLICATION_NAME,
    CHANNEL,
    MAX_PAYLOAD_BYTES,
    LogBus,
    LogSubscription,
    notification_payloads,
    parse_payload,
)
from gemini_gateway.server.store import Store, open_store
from tests.postgres import PostgresAdmin, require

# Only a guard against a hang: a delivery that works takes milliseconds.
WAIT_S = 10.0


async def next_ids(subscription: LogSubscription) -> list[str]:
    return await asyncio.wait_for(anext(subscription), WAIT_S)


async def collect(subscription: LogSubscription, count: int) -> list[str]:
    """Read lists of ids until `count` ids have arrived."""
    ids: list[str] = []
    while len(ids) < count:
        ids.extend(await next_ids(subscription))
    return ids


async def write(bus: LogBus, store: Store, written: dict[str, list[str]]) -> None:
    """What the log writer does: notify inside its transaction, publish after the commit."""
    async with store.begin() as conn:
        await bus.notify_in_transaction(conn, written)
    bus.published(written)


# Log ids in the gateway's form, each newer than the one before.
_next_id = itertools.count(int(new_log_id(), 16))


def ids(count: int) -> list[str]:
    return [f"{next(_next_id):024x}" for _ in range(count)]


# --- one process, both dialects -----------------------------------------------------------


@pytest.fixture
async def bus(store: Store) -> AsyncIterator[LogBus]:
    bus = LogBus(store)
    await bus.start()
    yield bus
    await bus.stop()


async def test_a_write_reaches_the_subscribers_of_its_project_only(
    bus: LogBus, store: Store
) -> None:
    first, second, other = bus.subscribe("p1"), bus.subscribe("p1"), bus.subscribe("p2")
    p1_ids, p2_ids = ids(3), ids(1)
    await write(bus, store, {"p1": p1_ids})
    await write(bus, store, {"p2": p2_ids})

    assert await next_ids(first) == p1_ids
    assert await next_ids(second) == p1_ids
    assert await next_ids(other) == p2_ids  # p1's ids never reached it
    # Each id once: the bus's own notifications (PostgreSQL) are not delivered again.
    more = ids(1)
    await write(bus, store, {"p1": more, "p2": more})
    assert await next_ids(first) == more
    assert await next_ids(other) == more


async def test_ids_arrive_oldest_first_in_one_list_per_wait(bus: LogBus) -> None:
    subscription = bus.subscribe("p1")
    batch = ids(5)
    bus.published({"p1": batch[3:]})
    bus.published({"p1": batch[:3]})
    assert await next_ids(subscription) == batch


async def test_unsubscribing_stops_delivery_and_ends_the_iterator(bus: LogBus) -> None:
    kept, left = bus.subscribe("p1"), bus.subscribe("p1")
    assert bus.subscriber_count("p1") == 2
    buffered = ids(2)
    bus.published({"p1": buffered})
    left.close()
    left.close()  # idempotent
    assert bus.subscriber_count("p1") == 1 and left.closed
    bus.published({"p1": ids(1)})
    # What was buffered before closing is still read, then the iterator ends.
    assert [batch async for batch in left] == [buffered]
    assert len(await collect(kept, 3)) == 3

    async with bus.subscribe("p2") as scoped:
        assert bus.subscriber_count("p2") == 1
    assert scoped.closed and bus.subscriber_count("p2") == 0
    assert bus.subscriber_count() == 1


async def test_a_waiting_reader_is_woken_by_close(bus: LogBus) -> None:
    subscription = bus.subscribe("p1")
    reader = asyncio.ensure_future(anext(subscription, None))
    await asyncio.sleep(0)  # the reader waits for ids
    subscription.close()
    assert await asyncio.wait_for(reader, WAIT_S) is None


async def test_a_slow_subscriber_keeps_the_newest_ids_and_counts_the_rest(bus: LogBus) -> None:
    subscription = bus.subscribe("p1", max_pending=5)
    batch = ids(12)
    bus.published({"p1": batch[:4]})
    bus.published({"p1": batch[4:6]})  # 6 waiting: 1 dropped
    bus.published({"p1": batch[6:]})  # 6 more: 6 dropped
    assert subscription.missed == 7
    assert await next_ids(subscription) == batch[7:]
    bus.published({"p1": batch[:1]})
    assert await next_ids(subscription) == batch[:1]
    assert subscription.missed == 7  # a running total


async def test_the_default_bound(bus: LogBus) -> None:
    subscription = bus.subscribe("p1")
    bus.published({"p1": [f"{i:024x}" for i in range(10_050)]})
    assert subscription.missed == 50
    assert len(await next_ids(subscription)) == 10_000


async def test_published_never_raises_into_the_writer(bus: LogBus) -> None:
    subscription = bus.subscribe("p1")
    bus.published({"p1": [], "p2": ["x"]})  # nothing to deliver, nobody listening
    bus.published({"p1": ids(1)})
    assert len(await next_ids(subscription)) == 1


async def test_stop_closes_every_subscription(store: Store) -> None:
    bus = LogBus(store)
    await bus.start()
    subscription = bus.subscribe("p1")
    await bus.stop()
    assert subscription.closed and bus.subscriber_count() == 0
    assert [batch async for batch in subscription] == []
    assert bus.subscribe("p1").closed  # a stopped bus takes no new subscribers
    await bus.stop()  # idempotent


async def test_sqlite_sends_nothing_and_listens_to_nothing(bus: LogBus, store: Store) -> None:
    if store.dialect == "sqlite":
        assert not bus.listening
        async with store.begin() as conn:
            await bus.notify_in_transaction(conn, {"p1": ids(2)})  # no statement, no error
    else:
        assert bus.listening


# --- payloads -----------------------------------------------------------------------------


def test_many_ids_are_split_over_payloads_under_the_limit() -> None:
    batch = [f"{i:024x}" for i in range(2000)]
    payloads = notification_payloads("replica-1", "my-project", batch)
    assert len(payloads) > 1
    assert all(len(payload.encode()) <= MAX_PAYLOAD_BYTES for payload in payloads)
    parsed = [parse_payload(payload) for payload in payloads]
    assert all(p is not None and p[:2] == ("replica-1", "my-project") for p in parsed)
    assert [log_id for p in parsed if p is not None for log_id in p[2]] == batch
    # As few as fit: every payload but the last is nearly full.
    assert all(len(payload.encode()) > MAX_PAYLOAD_BYTES - 30 for payload in payloads[:-1])


def test_a_payload_exactly_at_the_limit() -> None:
    header = len(notification_payloads("r", "p", ["x"])[0]) - len('"x"')
    exact = "y" * (MAX_PAYLOAD_BYTES - header - 2)
    assert [len(p.encode()) for p in notification_payloads("r", "p", [exact])] == [
        MAX_PAYLOAD_BYTES
    ]
    assert notification_payloads("r", "p", [exact + "y"]) == []  # cannot fit: left out
    assert notification_payloads("r", "p", []) == []


@pytest.mark.parametrize(
    "payload",
    ["", "not json", "[]", '{"replica": 1, "project": "p", "ids": []}',
     '{"replica": "r", "project": "p", "ids": [1]}', '{"replica": "r", "project": "p"}'],
)  # fmt: skip
def test_foreign_payloads_are_not_ours(payload: str) -> None:
    assert parse_payload(payload) is None


# --- replicas sharing PostgreSQL ----------------------------------------------------------


@dataclass
class Replicas:
    url: str
    a: LogBus
    b: LogBus


@pytest.fixture(scope="module")
async def postgres_url(postgres: PostgresAdmin) -> str:
    require(postgres)
    return postgres.url(await postgres.create())


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[Replicas]:
    """Two buses, each on its own store of the same database: two replicas' view."""
    stores = [await open_store(postgres_url, migrate=False) for _ in range(2)]
    buses = [LogBus(store) for store in stores]
    for bus in buses:
        await bus.start()
        assert bus.listening
    yield Replicas(postgres_url, *buses)
    for bus in buses:
        await bus.stop()
        await bus.store.close()


async def admin_connection(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


@pytest.mark.postgres
async def test_replicas_see_each_others_logs_and_their_own_once(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    on_a, on_b, elsewhere_on_b = a.subscribe("p1"), b.subscribe("p1"), b.subscribe("p2")
    from_a, from_b = ids(2), ids(1)

    await write(a, a.store, {"p1": from_a})
    assert await next_ids(on_b) == from_a
    await write(b, b.store, {"p1": from_b, "p2": from_b})
    assert await next_ids(elsewhere_on_b) == from_b
    # PostgreSQL delivers notifications in commit order: once b's has reached a, a's own
    # (ignored) would have too. Each bus saw each id exactly once.
    assert await collect(on_a, 3) == from_a + from_b
    assert await collect(on_b, 1) == from_b
    await write(a, a.store, {"p1": (last := ids(1))})
    assert await next_ids(on_a) == last
    assert await next_ids(on_b) == last


@pytest.mark.postgres
async def test_a_rolled_back_write_notifies_nobody(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    on_b = b.subscribe("p1")
    with pytest.raises(RuntimeError):
        async with a.store.begin() as conn:
            await a.notify_in_transaction(conn, {"p1": ids(1)})
            raise RuntimeError("the write failed")
    await write(a, a.store, {"p1": (committed := ids(1))})
    assert await next_ids(on_b) == committed


@pytest.mark.postgres
async def test_two_thousand_ids_cross_in_several_notifications(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    on_b = b.subscribe("p1")
    batch = ids(2000)
    assert len(batch[0]) == 24
    assert len(notification_payloads(a.replica_id, "p1", batch)) > 1
    await write(a, a.store, {"p1": batch})
    assert await collect(on_b, 2000) == batch


@pytest.mark.postgres
async def test_notifications_from_elsewhere_on_the_channel_are_ignored(
    replicas: Replicas,
) -> None:
    b = replicas.b
    on_b = b.subscribe("p1")
    conn = await admin_connection(replicas.url)
    try:
        for payload in ["garbage", json.dumps({"replica": "x", "project": "p1", "ids": [1]})]:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        good = ids(1)
        await conn.execute(
            "SELECT pg_notify($1, $2)",
            CHANNEL,
            json.dumps({"replica": "another", "project": "p1", "ids": good}),
        )
    finally:
        await conn.close()
    assert await next_ids(on_b) == good


async def listen_pids(conn: asyncpg.Connection) -> set[int]:
    """Backends of this database that are tail listeners with their LISTEN done."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1 AND state = 'idle' AND query LIKE 'LISTEN%'",
        APPLICATION_NAME,
    )
    return {row["pid"] for row in rows}


@pytest.mark.postgres
async def test_the_listen_connection_is_reopened_after_the_server_drops_it(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas.a, replicas.b
    on_b = b.subscribe("p1")
    conn = await admin_connection(replicas.url)
    try:
        before = await listen_pids(conn)
        assert len(before) == 2  # one per bus
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1",
            APPLICATION_NAME,
        )
        # Both buses reconnect and LISTEN again, on new backends.
        async with asyncio.timeout(WAIT_S):
            while True:
                now = await listen_pids(conn)
                if len(now) == 2 and not now & before:
                    break
                await asyncio.sleep(0.02)
    finally:
        await conn.close()
    assert a.listening and b.listening
    await write(a, a.store, {"p1": (after := ids(1))})
    assert await next_ids(on_b) == after
    lost = [r for r in caplog.records if "was lost" in r.getMessage()]
    assert len(lost) == 2  # once per bus


@pytest.mark.postgres
async def test_a_database_missing_at_start_is_listened_to_once_it_exists(
    postgres: PostgresAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    require(postgres)
    caplog.set_level(logging.INFO, logger="gemini_gateway.server.log_tail")
    name = f"gw_test_{secrets.token_hex(6)}"
    store = await open_store(postgres.url(name), migrate=False)  # connects only when used
    bus = LogBus(store)
    admin = await asyncpg.connect(postgres.admin_url)
    try:
        await bus.start()  # cannot connect, says so, and does not fail
        assert not bus.listening
        assert [r.levelname for r in caplog.records if "cannot listen" in r.getMessage()] == [
            "WARNING"
        ]
        await admin.execute(f'CREATE DATABASE "{name}"')
        async with asyncio.timeout(WAIT_S):
            while True:
                if bus.listening:
                    break
                await asyncio.sleep(0.02)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("cannot listen" in m for m in messages) == 1  # retries are not logged
        assert any("listening for other replicas' logs again" in m for m in messages)
    finally:
        await bus.stop()
        await store.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
