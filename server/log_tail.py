"""The live tail's transport: which log ids were just committed, per project, to followers.

`LogBus` is the gateway's `LogNotifier`. The log writer calls `notify_in_transaction` inside
its transaction and `published` after the commit; TailLogs streams `subscribe` to a project
and read lists of new log ids, then load the logs themselves from the store.

Within one process, `published` hands the ids to the subscribers directly. Replicas sharing a
PostgreSQL store also tell each other: the writer's transaction runs `pg_notify` on the
`gateway_logs` channel (PostgreSQL delivers it at commit, never for a rolled-back write), and
every bus LISTENs on one dedicated connection of its own. A notification names the replica
that sent it, so a bus skips its own (already delivered by `published`). SQLite has no such
channel and needs none: one process owns a SQLite store.

A follower never slows the writer: delivery appends to a bounded buffer per subscription,
and a subscriber that falls behind loses its oldest ids, counted in `missed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.server.store.engine import Store, describe_error

log = logging.getLogger(__name__)

CHANNEL = "gateway_logs"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7999
DEFAULT_MAX_PENDING = 10_000
# The listen connection: how soon it is retried after a failure (doubling up to the cap), how
# often an idle one is checked (a silently dead TCP peer never reports itself), and the
# limits on connecting and checking.
RECONNECT_DELAY_S = 0.1
RECONNECT_DELAY_MAX_S = 5.0
PING_INTERVAL_S = 30.0
CONNECT_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
# Named in pg_stat_activity, so an operator sees what the idle connection is for.
APPLICATION_NAME = "gemini-gateway log tail"

_NOTIFY = sa.text(
    f"SELECT pg_notify('{CHANNEL}', payload) FROM unnest(CAST(:payloads AS text[])) AS payload"
)
# Options of SQLAlchemy's asyncpg adapter that asyncpg.connect itself does not take.
_CONNECT_PARAMETERS = frozenset(inspect.signature(asyncpg.connect).parameters)


class LogSubscription:
    """New log ids of one project, as an async iterator of lists (oldest first).

    Each list holds every id delivered since the previous one. At most `max_pending` ids
    wait; when more arrive the oldest are dropped and counted in `missed` (a running total:
    a reader compares it before and after a list to know how many it lost). Use it as an
    async context manager, or call `close()`, to unsubscribe; once closed, the iterator
    yields what is still buffered, then ends. It belongs to the event loop that created it.
    """

    def __init__(self, bus: LogBus, project: str, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be positive")
        self.project = project
        self.missed = 0
        self._bus = bus
        self._pending: deque[str] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unsubscribe (idempotent); a reader waiting for ids gets the rest, then the end."""
        if self._closed:
            return
        self._closed = True
        self._bus._unsubscribe(self)
        self._wake.set()

    def _deliver(self, ids: Sequence[str]) -> None:
        pending = self._pending
        assert pending.maxlen is not None
        overflow = len(pending) + len(ids) - pending.maxlen
        if overflow > 0:
            self.missed += overflow
        pending.extend(ids)  # a full deque drops from the left: the oldest
        self._wake.set()

    def __aiter__(self) -> LogSubscription:
        return self

    async def __anext__(self) -> list[str]:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        batch = sorted(self._pending)  # ids start with their time: sorted is oldest first
        self._pending.clear()
        return batch

    async def __aenter__(self) -> LogSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def notification_payloads(replica: str, project: str, ids: Sequence[str]) -> list[str]:
    """JSON payloads naming `replica`, `project` and `ids`, each under PostgreSQL's limit.

    The ids are split over as few payloads as fit, in order. An id too long to fit even
    alone (never one of the gateway's) is left out, and logged.
    """
    header = json.dumps({"replica": replica, "project": project, "ids": []}, separators=(",", ":"))
    room = MAX_PAYLOAD_BYTES - len(header.encode())
    payloads: list[str] = []
    chunk: list[str] = []
    used = 0
    for log_id in ids:
        size = len(json.dumps(log_id).encode()) + (1 if chunk else 0)  # a comma after the first
        if size > room:
            log.warning("log tail: a log id of %d characters is too long to notify", len(log_id))
            continue
        if used + size > room:
            payloads.append(_payload(replica, project, chunk))
            chunk, used = [], 0
            size -= 1  # first of its payload: no comma
        chunk.append(log_id)
        used += size
    if chunk:
        payloads.append(_payload(replica, project, chunk))
    return payloads


def _payload(replica: str, project: str, ids: list[str]) -> str:
    return json.dumps({"replica": replica, "project": project, "ids": ids}, separators=(",", ":"))


def parse_payload(payload: str) -> tuple[str, str, list[str]] | None:
    """(replica, project, ids) of a notification; None if it is not one of ours."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    replica, project, ids = data.get("replica"), data.get("project"), data.get("ids")
    if not isinstance(replica, str) or not isinstance(project, str) or not isinstance(ids, list):
        return None
    if not all(isinstance(log_id, str) for log_id in ids):
        return None
    return replica, project, ids


def listen_connect_args(store: Store) -> dict[str, Any]:
    """asyncpg.connect keyword arguments for the database of a PostgreSQL `store`."""
    engine = store.engine
    _args, params = engine.dialect.create_connect_args(engine.url)
    kwargs = {key: value for key, value in params.items() if key in _CONNECT_PARAMETERS}
    kwargs["server_settings"] = {"application_name": APPLICATION_NAME}
    kwargs["timeout"] = CONNECT_TIMEOUT_S
    return kwargs


class LogBus:
    """Delivers the ids of committed logs to the TailLogs subscribers of their project.

    On PostgreSQL, `start()` opens one dedicated connection that LISTENs for the logs of
    the other replicas. If it drops, it is reopened in the background, sooner at first, then
    every `RECONNECT_DELAY_MAX_S` at most; the outage is logged once. While it is down,
    logs written by other replicas are not seen by this process's tails (its own still are),
    and those written meanwhile are not replayed once it is back.

    Every method runs on the gateway's event loop; `published` never blocks and never
    raises, so the writer is not held up by its followers.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.replica_id = secrets.token_hex(8)
        self._subscribers: dict[str, set[LogSubscription]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._stopped = False

    @property
    def listening(self) -> bool:
        """True while the PostgreSQL listen connection is up (always False on SQLite)."""
        return self._connection is not None

    # --- subscribers ----------------------------------------------------------------------

    def subscribe(self, project: str, *, max_pending: int = DEFAULT_MAX_PENDING) -> LogSubscription:
        """Follow the new logs of `project`: every log committed from now on.

        After `stop()`, the subscription is closed at once (its iterator ends).
        """
        subscription = LogSubscription(self, project, max_pending)
        if self._stopped:
            subscription.close()
            return subscription
        self._subscribers.setdefault(project, set()).add(subscription)
        return subscription

    def subscriber_count(self, project: str | None = None) -> int:
        """Open subscriptions, of `project` or of every project."""
        if project is not None:
            return len(self._subscribers.get(project, ()))
        return sum(len(subscriptions) for subscriptions in self._subscribers.values())

    def _unsubscribe(self, subscription: LogSubscription) -> None:
        subscriptions = self._subscribers.get(subscription.project)
        if subscriptions is None:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self._subscribers[subscription.project]

    def _deliver(self, project: str, ids: Sequence[str]) -> None:
        for subscription in self._subscribers.get(project, ()):
            subscription._deliver(ids)

    # --- LogNotifier ----------------------------------------------------------------------

    def published(self, written: Mapping[str, Sequence[str]]) -> None:
        """The writer's transaction committed `written` (project -> ids, oldest first)."""
        try:
            for project, ids in written.items():
                if ids:
                    self._deliver(project, ids)
        except Exception:  # a follower's problem must never reach the writer
            log.exception("log tail: delivering new logs failed")

    async def notify_in_transaction(
        self, conn: AsyncConnection, written: Mapping[str, Sequence[str]]
    ) -> None:
        """Tell the other replicas (PostgreSQL), delivered when `conn`'s transaction commits.

        On SQLite there are no other replicas: nothing to do. A database error here is the
        writer's transaction failing, and propagates like any other of its statements.
        """
        if conn.dialect.name != "postgresql":
            return
        payloads = [
            payload
            for project, ids in written.items()
            for payload in notification_payloads(self.replica_id, project, ids)
        ]
        if payloads:
            await conn.execute(_NOTIFY, {"payloads": payloads})

    # --- the listen connection ------------------------------------------------------------

    async def start(self) -> None:
        """Listen for the other replicas' logs (PostgreSQL; nothing to do on SQLite).

        Waits for the first connection attempt; if it fails, the bus keeps trying in the
        background (logged once) rather than failing the gateway's start.
        """
        self._stopped = False
        if self.store.dialect != "postgresql":
            return
        if self._listener is not None and not self._listener.done():
            return
        first_attempt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(first_attempt), name="log-tail-listen")
        await asyncio.wait([first_attempt, self._listener], return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        """Stop listening and close every subscription (their iterators end)."""
        self._stopped = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        for subscriptions in list(self._subscribers.values()):
            for subscription in list(subscriptions):
                subscription.close()

    async def _listen(self, first_attempt: asyncio.Future[None]) -> None:
        """Keep one LISTEN connection open until cancelled."""
        delay = RECONNECT_DELAY_S
        outage_logged = False
        while True:
            try:
                connection = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not first_attempt.done():
                    first_attempt.set_result(None)
                if not outage_logged:
                    log.warning(
                        "log tail: cannot listen for other replicas' logs (%s); retrying, and "
                        "until then tails here see only this replica's logs",
                        describe_error(exc),
                    )
                    outage_logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX_S)
                continue
            if outage_logged:
                log.info("log tail: listening for other replicas' logs again")
                outage_logged = False
            delay = RECONNECT_DELAY_S
            if not first_attempt.done():
                first_attempt.set_result(None)
            try:
                reason = await self._watch(connection)
            finally:
                self._connection = None
                await _close(connection)
            log.warning(
                "log tail: the connection listening for other replicas' logs was lost (%s); "
                "reconnecting, and their logs written meanwhile are not tailed here",
                reason,
            )
            outage_logged = True

    async def _open(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(**listen_connect_args(self.store))
        try:
            await connection.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        return connection

    async def _watch(self, connection: asyncpg.Connection) -> str:
        """Return why `connection` is no longer usable: lost, or silent to a ping."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        while not connection.is_closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_INTERVAL_S):
                    await lost.wait()
                    return "closed by the server or the network"
            try:
                async with asyncio.timeout(PING_TIMEOUT_S):
                    await connection.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return f"no answer to a check: {describe_error(exc)}"
        return "closed"

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        parsed = parse_payload(payload)
        if parsed is None:
            log.debug("log tail: ignored a notification that is not ours: %.100r", payload)
            return
        replica, project, ids = parsed
        if replica == self.replica_id or not ids:
            return  # this replica's own: `published` delivered them already
        self._deliver(project, ids)


async def _close(connection: asyncpg.Connection) -> None:
    """Close politely (the server logs no broken connection); abort if that fails."""
    if connection.is_closed():
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await connection.close()
    except Exception:  # the server is gone or does not answer: just drop the socket
        connection.terminate()
    except BaseException:
        connection.terminate()
        raise
