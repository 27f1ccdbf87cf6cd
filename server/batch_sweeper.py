"""Metering the batches nobody reads: a periodic look at every batch not metered yet.

A batch is metered when an answer passing through the gateway shows it done
(batch_usage.BatchUsage), but the upstream bills a batch that has ended whether or not
anyone reads it. So every `batch_meter_interval_s` the sweeper reads each batch kept in
`batch_meters` and not metered yet (up to SWEEP_SIZE a round, in name order, going on
where the last round stopped) with GetOperation, through the forwarder as the batch's
project: one that has ended is metered by that very call, exactly as if its caller had read
it. A batch the upstream no longer knows (deleted before it was read) cannot be metered; it
is marked so and no longer read (`gateway_batches_seen_total{outcome="gone"}`).

Every replica (and every worker process) sweeps, but shares the reads: a round claims the
batches it reads until the next round (`batch_meters.read_after`, one UPDATE, so of replicas
sweeping at once each batch goes to one), and the others skip a claimed batch. So a batch is
read about once per interval, however many replicas run. One whose replica stopped before
reading it is read by any replica once the claim has run out. A batch is metered once
whatever reads it (the claim in BatchUsage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import cast

import grpc
import sqlalchemy as sa
from google.longrunning import operations_pb2

from gemini_gateway.server import errors
from gemini_gateway.server.batch_usage import GET_OPERATION, SEEN, settle
from gemini_gateway.server.forwarder import Forwarder
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.reruns import CallContext
from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.models import BatchMeter

log = logging.getLogger(__name__)

SWEEP_SIZE = 100
"""Batches read per round at most."""
SWEEPER_CALLER = "gateway:batch-meter"
"""Caller name of the reads the sweeper makes (as the batch's project)."""
READ_TIMEOUT_S = 30.0

_meters = cast(sa.Table, BatchMeter.__table__)


class BatchSweeper:
    """Reads the unmetered batches every `interval_s` seconds (see the module docstring)."""

    def __init__(self, store: Store, forwarder: Forwarder, interval_s: float) -> None:
        self._store = store
        self._forwarder = forwarder
        self._interval = interval_s
        self._after = ""  # the last name read: the next round goes on from there
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception:  # a store outage: the next round tries again
                log.exception("batch sweeper: the round failed")

    async def sweep(self) -> int:
        """One round; how many batches it read."""
        now = datetime.now(UTC)
        pending = await self._claim(self._after, now)
        if not pending and self._after:
            self._after = ""  # past the last name: start again from the first
            pending = await self._claim("", now)
        route = self._forwarder.routes[GET_OPERATION]
        for name, project in pending:
            self._after = name
            context = CallContext((), READ_TIMEOUT_S, Identity(project, SWEEPER_CALLER))
            try:
                await self._forwarder.call(
                    route,
                    operations_pb2.GetOperationRequest(name=name),
                    cast(grpc.aio.ServicerContext, context),
                    context.identity,
                )
            except errors.UpstreamError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    await self._gone(name)
                else:
                    log.info("batch sweeper: could not read %s: %s", name, exc.message)
        return len(pending)

    async def _claim(self, after: str, now: datetime) -> list[tuple[str, str]]:
        """Up to SWEEP_SIZE batches after `after`, not metered yet and claimed by no replica
        (or no longer), claimed until the next round; their (name, project) by name."""
        due = sa.and_(
            _meters.c.metered_time.is_(None),
            sa.or_(_meters.c.read_after.is_(None), _meters.c.read_after <= now),
        )
        names = (
            sa.select(_meters.c.name)
            .where(due, _meters.c.name > after)
            .order_by(_meters.c.name)
            .limit(SWEEP_SIZE)
        )
        # `due` again in the UPDATE: on PostgreSQL a replica that waited for another's claim
        # of a row re-checks it against the row as that claim left it, and skips it.
        statement = (
            _meters.update()
            .where(due, _meters.c.name.in_(names.scalar_subquery()))
            .values(read_after=now + timedelta(seconds=self._interval))
            .returning(_meters.c.name, _meters.c.project)
        )
        async with self._store.begin() as conn:
            rows = (await conn.execute(statement)).all()
        return sorted((row.name, row.project) for row in rows)

    async def _gone(self, name: str) -> None:
        if await settle(self._store, name, datetime.now(UTC)):
            SEEN.labels("gone").inc()
            log.warning("batch %s is gone upstream before it was metered: not metered", name)
