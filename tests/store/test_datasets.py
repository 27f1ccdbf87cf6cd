"""Dataset queries on SQLite and PostgreSQL: membership by ids and by filter, paging, limits,
what deletion keeps, and reading a dataset's logs in full page by page."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta

import pytest
import sqlalchemy as sa

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.log_event import LogEvent, LoggingPolicy, new_log_id
from gemini_gateway.server.store import Store
from gemini_gateway.server.store import datasets as ds
from gemini_gateway.server.store.log_tables import DatasetLog, DatasetRun, RequestLog
from gemini_gateway.server.store.logs import LogWriter
from tests.store.support import T0

POLICY = LoggingPolicy(
    enabled=True, max_logs=1_000_000, retention_s=55 * 86400.0, at_limit="stop_logging"
)
_clock = itertools.count()


def log_event(
    prompt: str = "hello",
    answer: str = "hi there",
    *,
    project: str = "p1",
    labels: Mapping[str, str] | None = None,
) -> LogEvent:
    """A logged unary call; ids (and times) increase with every event made."""
    tick = next(_clock)
    created = T0 + timedelta(seconds=tick)
    request = generative_service_pb2.GenerateContentRequest(
        model="models/gemini-2.5-flash",
        contents=[content_pb2.Content(role="user", parts=[content_pb2.Part(text=prompt)])],
        labels=dict(labels or {}),
    )
    response = generative_service_pb2.GenerateContentResponse(
        candidates=[
            generative_service_pb2.Candidate(
                content=content_pb2.Content(role="model", parts=[content_pb2.Part(text=answer)])
            )
        ]
    )
    return LogEvent(
        id=new_log_id(created.timestamp()),
        project=project,
        caller="alice",
        create_time=created,
        model="models/gemini-2.5-flash",
        method="GenerateContent",
        api_version="v1beta",
        labels=dict(labels or {}),
        status="OK",
        error_message="",
        latency_ms=40.0,
        first_chunk_ms=None,
        prompt_tokens=3,
        candidates_tokens=4,
        cached_tokens=0,
        thoughts_tokens=0,
        tool_use_tokens=0,
        total_tokens=7,
        incomplete=False,
        request=request,
        responses=[response],
    )


async def write_logs(store: Store, events: Sequence[LogEvent]) -> list[str]:
    """Store the events through the log writer, as the recorder would; their ids."""
    writer = LogWriter(lambda project: POLICY)
    async with store.begin() as conn:
        after = await writer(conn, events)
    if after is not None:
        after()
    return [event.id for event in events]


async def logs_of(store: Store, labels: Mapping[str, str], count: int, **fields) -> list[str]:
    return await write_logs(store, [log_event(labels=labels, **fields) for _ in range(count)])


async def member_ids(store: Store, project: str, dataset_id: str) -> list[str]:
    return [log.id async for log in ds.iter_dataset_logs(store, project, dataset_id, page_size=3)]


async def test_create_from_ids(store: Store) -> None:
    ids = await logs_of(store, {"team": "a"}, 3)
    record = await ds.create_dataset(
        store,
        "p1",
        display_name="Hard Questions (v2)",
        description="picked by hand",
        log_ids=[*ids, ids[0]],  # a repeated id counts once
        now=T0,
    )
    assert re.fullmatch(r"hard-questions-v2-[a-z0-9]{5}", record.dataset_id)
    assert record.name == f"projects/p1/datasets/{record.dataset_id}"
    assert (record.display_name, record.description) == ("Hard Questions (v2)", "picked by hand")
    assert record.log_count == 3
    assert record.create_time == record.update_time == T0
    assert await ds.get_dataset(store, "p1", record.dataset_id) == record
    assert await member_ids(store, "p1", record.dataset_id) == sorted(ids, reverse=True)


async def test_create_refuses_unknown_ids_and_other_projects_logs(store: Store) -> None:
    mine = await logs_of(store, {}, 2)
    theirs = await logs_of(store, {}, 1, project="p2")
    never = [new_log_id(0) for _ in range(7)]
    with pytest.raises(ds.UnknownLogs) as caught:
        await ds.create_dataset(store, "p1", display_name="x", log_ids=[*mine, *theirs, *never])
    assert caught.value.log_ids == [*theirs, *never]
    # Nothing was created: the whole call failed.
    assert (await ds.list_datasets(store, "p1"))[0] == []


async def test_create_from_filter(store: Store) -> None:
    wanted = await logs_of(store, {"team": "a"}, 4)
    await logs_of(store, {"team": "b"}, 2)
    await logs_of(store, {"team": "a"}, 2, project="p2")
    record = await ds.create_dataset(
        store, "p1", display_name="Team A", dataset_id="team-a", filter_text='labels.team = "a"'
    )
    assert record.dataset_id == "team-a"
    assert record.log_count == 4
    assert await member_ids(store, "p1", "team-a") == sorted(wanted, reverse=True)
    with pytest.raises(FilterError):
        await ds.create_dataset(store, "p1", display_name="bad", filter_text="labels.team = (")


async def test_create_checks_ids_names_and_limits(store: Store) -> None:
    await ds.create_dataset(store, "p1", display_name="first", dataset_id="taken")
    with pytest.raises(ds.DatasetExists):
        await ds.create_dataset(store, "p1", display_name="second", dataset_id="taken")
    # The same id in another project is another dataset.
    await ds.create_dataset(store, "p2", display_name="theirs", dataset_id="taken")

    bad_inputs: list[tuple[dict, str]] = [
        ({"display_name": ""}, "display_name"),
        ({"display_name": "   "}, "display_name"),
        ({"display_name": "x" * 129}, "display_name"),
        ({"display_name": "ok", "description": "d" * 10_001}, "description"),
        ({"display_name": "ok", "dataset_id": "Upper"}, "dataset_id"),
        ({"display_name": "ok", "dataset_id": "ends-with-"}, "dataset_id"),
        ({"display_name": "ok", "dataset_id": "9starts-with-digit"}, "dataset_id"),
        ({"display_name": "ok", "dataset_id": "a" * 64}, "dataset_id"),
        ({"display_name": "ok", "log_ids": ["x"] * 10_001}, "log_ids"),
        ({"display_name": "ok", "log_ids": ["x"], "filter_text": "model = m"}, "filter"),
    ]
    for fields, field in bad_inputs:
        with pytest.raises(ds.DatasetError) as caught:
            await ds.create_dataset(store, "p1", **fields)
        assert caught.value.field == field, fields
    longest = await ds.create_dataset(store, "p1", display_name="y" * 128, description="d" * 10_000)
    assert len(longest.dataset_id) <= 63
    assert (
        await ds.create_dataset(store, "p1", display_name="a", dataset_id="a" * 63)
    ).log_count == 0


def test_generated_ids_follow_the_display_name() -> None:
    pattern = ds.DATASET_ID_PATTERN
    cases = {
        "Sentence Translator": "sentence-translator-",
        "  Émile's 2nd set!! ": "mile-s-2nd-set-",
        "2025 evals": "dataset-2025-evals-",
        "日本語": "dataset-",
        "x" * 200: "x" * 57 + "-",
    }
    for display_name, stem in cases.items():
        generated = ds.new_dataset_id(display_name)
        assert pattern.fullmatch(generated), generated
        assert generated.startswith(stem) and len(generated) == len(stem) + 5, generated
    assert ds.new_dataset_id("same") != ds.new_dataset_id("same")


async def test_list_newest_first_in_pages(store: Store) -> None:
    made = []
    for index in range(5):
        made.append(
            await ds.create_dataset(
                store, "p1", display_name=f"set {index}", now=T0 + timedelta(minutes=index)
            )
        )
    # Two created at the same instant still page without loss or repetition.
    for suffix in ("b", "a"):
        made.append(
            await ds.create_dataset(
                store, "p1", display_name="tie", dataset_id=f"tie-{suffix}",
                now=T0 + timedelta(minutes=9),
            )
        )  # fmt: skip
    await ds.create_dataset(store, "p2", display_name="not mine")
    expected = sorted(made, key=lambda r: (r.create_time, r.dataset_id), reverse=True)

    seen, token, pages = [], "", 0
    while True:
        page, token = await ds.list_datasets(store, "p1", page_size=2, page_token=token)
        seen += page
        pages += 1
        if not token:
            break
    assert [r.dataset_id for r in seen] == [r.dataset_id for r in expected]
    assert pages == 4
    everything, last = await ds.list_datasets(store, "p1")
    assert len(everything) == 7 and last == ""

    _, token = await ds.list_datasets(store, "p1", page_size=2)
    for bad in ("garbage!", "eyJ4IjoxfQ", token[:-3]):
        with pytest.raises(ds.DatasetError) as caught:
            await ds.list_datasets(store, "p1", page_token=bad)
        assert caught.value.field == "page_token"
    with pytest.raises(ds.DatasetError):  # another project's token
        await ds.list_datasets(store, "p2", page_token=token)
    with pytest.raises(ds.DatasetError):
        await ds.list_datasets(store, "p1", page_size=-1)


async def test_update_and_not_found(store: Store) -> None:
    await ds.create_dataset(
        store, "p1", display_name="old", description="keep", dataset_id="u", now=T0
    )
    later = T0 + timedelta(hours=1)
    renamed = await ds.update_dataset(store, "p1", "u", display_name="new", now=later)
    assert (renamed.display_name, renamed.description) == ("new", "keep")
    assert renamed.create_time == T0 and renamed.update_time == later
    described = await ds.update_dataset(store, "p1", "u", description="", now=later)
    assert described.description == ""
    with pytest.raises(ds.DatasetError):
        await ds.update_dataset(store, "p1", "u", display_name="")
    for project, dataset_id in (("p1", "missing"), ("p2", "u")):
        with pytest.raises(ds.DatasetNotFound):
            await ds.update_dataset(store, project, dataset_id, display_name="x")
        with pytest.raises(ds.DatasetNotFound):
            await ds.get_dataset(store, project, dataset_id)
        with pytest.raises(ds.DatasetNotFound):
            await ds.delete_dataset(store, project, dataset_id)
        with pytest.raises(ds.DatasetNotFound):
            await ds.add_logs(store, project, dataset_id, filter_text="model = x")
        with pytest.raises(ds.DatasetNotFound):
            await member_ids(store, project, dataset_id)


async def test_add_and_remove_count_what_changed(store: Store) -> None:
    a = await logs_of(store, {"team": "a"}, 3)
    b = await logs_of(store, {"team": "b"}, 2)
    await ds.create_dataset(
        store, "p1", display_name="mix", dataset_id="mix", log_ids=a[:1], now=T0
    )

    t1 = T0 + timedelta(hours=1)
    added, record = await ds.add_logs(store, "p1", "mix", log_ids=a[:2], now=t1)
    assert (added, record.log_count, record.update_time) == (1, 2, t1)
    added, record = await ds.add_logs(store, "p1", "mix", filter_text='labels.team = "a"', now=t1)
    assert (added, record.log_count) == (1, 3)

    t2 = T0 + timedelta(hours=2)
    added, record = await ds.add_logs(store, "p1", "mix", filter_text='labels.team = "a"', now=t2)
    assert (added, record.log_count, record.update_time) == (0, 3, t1)  # nothing changed
    with pytest.raises(ds.UnknownLogs):
        await ds.add_logs(store, "p1", "mix", log_ids=[b[0], new_log_id(0)])
    added, record = await ds.add_logs(store, "p1", "mix", log_ids=b, now=t2)
    assert (added, record.log_count, record.update_time) == (2, 5, t2)

    t3 = T0 + timedelta(hours=3)
    removed, record = await ds.remove_logs(
        store, "p1", "mix", log_ids=[a[0], new_log_id(0)], now=t3
    )
    assert (removed, record.log_count, record.update_time) == (1, 4, t3)
    removed, record = await ds.remove_logs(
        store, "p1", "mix", filter_text='labels.team = "b"', now=t3
    )
    assert (removed, record.log_count) == (2, 2)
    removed, record = await ds.remove_logs(store, "p1", "mix", log_ids=[a[0]], now=T0)
    assert (removed, record.update_time) == (0, t3)
    assert await member_ids(store, "p1", "mix") == sorted(a[1:], reverse=True)

    for call in (ds.add_logs, ds.remove_logs):
        with pytest.raises(ds.DatasetError):
            await call(store, "p1", "mix")  # neither ids nor filter
        with pytest.raises(FilterError):
            await call(store, "p1", "mix", filter_text="labels.team = (")


async def test_delete_keeps_the_logs_and_drops_memberships_and_runs(store: Store) -> None:
    ids = await logs_of(store, {}, 3)
    await ds.create_dataset(store, "p1", display_name="gone", dataset_id="gone", log_ids=ids)
    await ds.create_dataset(store, "p1", display_name="stays", dataset_id="stays", log_ids=ids)
    async with store.begin() as conn:
        await conn.execute(
            sa.insert(DatasetRun).values(
                project="p1", dataset_id="gone", run_id="r1", model="models/m", mode="direct",
                state="pending", create_time=T0, concurrency=1,
            )
        )  # fmt: skip
    await ds.delete_dataset(store, "p1", "gone")
    async with store.connect() as conn:
        logs = await conn.scalar(sa.select(sa.func.count()).select_from(RequestLog))
        memberships = (
            await conn.execute(
                sa.select(DatasetLog.dataset_id, sa.func.count()).group_by(DatasetLog.dataset_id)
            )
        ).all()
        runs = await conn.scalar(sa.select(sa.func.count()).select_from(DatasetRun))
    assert logs == 3
    assert [tuple(row) for row in memberships] == [("stays", 3)]
    assert runs == 0
    with pytest.raises(ds.DatasetNotFound):
        await ds.get_dataset(store, "p1", "gone")

    # A log deleted from the store leaves the datasets it was in.
    async with store.begin() as conn:
        await conn.execute(sa.delete(RequestLog).where(RequestLog.id == ids[0]))
    assert (await ds.get_dataset(store, "p1", "stays")).log_count == 2


async def test_iterates_every_log_in_full_page_by_page(store: Store) -> None:
    ids = await write_logs(store, [log_event(f"question {n}", f"answer {n}") for n in range(23)])
    others = await logs_of(store, {}, 2)
    await ds.create_dataset(store, "p1", display_name="all", dataset_id="all", log_ids=ids)
    await ds.create_dataset(store, "p1", display_name="other", dataset_id="other", log_ids=others)
    for page_size in (1, 5, 23, 100):
        logs = [log async for log in ds.iter_dataset_logs(store, "p1", "all", page_size=page_size)]
        assert [log.id for log in logs] == sorted(ids, reverse=True)
    assert all("question" in log.request_json and "answer" in log.response_json for log in logs)
    await ds.create_dataset(store, "p1", display_name="empty", dataset_id="empty")
    assert await member_ids(store, "p1", "empty") == []
