"""The run store on SQLite and PostgreSQL: creating runs from datasets, storing answers,
reading runs with their summaries, listing, and what happens when logs or datasets go."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from gemini_gateway.server.pricing import PriceTable, TokenSums
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.log_tables import DatasetLog, DatasetRow, DatasetRun, RequestLog
from gemini_gateway.server.store.runs import (
    ABANDONED_MESSAGE,
    AdoptedRun,
    CallOutput,
    EmptyDataset,
    NoSuchDataset,
    RerunAnswer,
    RunKey,
    Tokens,
    adopt_batch_runs,
    create_run,
    dataset_exists,
    fail_abandoned_runs,
    first_candidate_text,
    get_run,
    hand_over_batch_runs,
    list_runs,
    record_answers,
    renew_run_leases,
    run_requests,
    set_run_state,
    text_similarity,
    unanswered_log_ids,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"


def response_json(text: str, thought: str | None = None) -> str:
    parts: list[dict[str, Any]] = [{"text": thought, "thought": True}] if thought else []
    parts.append({"text": text})
    return json.dumps(
        {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}]}
    )


def request_json(prompt: str) -> str:
    return json.dumps({"model": FLASH, "contents": [{"role": "user", "parts": [{"text": prompt}]}]})


async def add_log(
    store: Store,
    log_id: str,
    *,
    project: str = "p1",
    text: str = "an answer",
    status: str = "OK",
    latency_ms: float = 100.0,
    prompt_tokens: int = 10,
    candidates_tokens: int = 20,
    thoughts_tokens: int = 0,
) -> None:
    if status != "OK":
        candidates_tokens = 0
    values = {
        "id": log_id,
        "project": project,
        "create_time": T0,
        "caller": "alice",
        "model": FLASH,
        "method": "GenerateContent",
        "api_version": "v1beta",
        "labels": {},
        "status": status,
        "error_message": "" if status == "OK" else "the model is overloaded",
        "latency_ms": latency_ms,
        "first_chunk_ms": None,
        "prompt_tokens": prompt_tokens,
        "candidates_tokens": candidates_tokens,
        "cached_tokens": 0,
        "thoughts_tokens": thoughts_tokens,
        "tool_use_tokens": 0,
        "total_tokens": prompt_tokens + candidates_tokens + thoughts_tokens,
        "incomplete": False,
        "finish_reason": "STOP" if status == "OK" else "",
        "response_id": "",
        "prompt_preview": "",
        "response_preview": "",
        "search_text": "",
        "request_json": request_json(f"prompt of {log_id}"),
        "response_json": response_json(text, thought="thinking...") if status == "OK" else "",
        "chunk_offsets_ms": [],
    }
    async with store.begin() as conn:
        await conn.execute(sa.insert(RequestLog).values(**values))


async def add_dataset(
    store: Store, dataset_id: str, log_ids: list[str], *, project: str = "p1"
) -> None:
    async with store.begin() as conn:
        await conn.execute(
            sa.insert(DatasetRow).values(
                project=project,
                dataset_id=dataset_id,
                display_name=dataset_id,
                description="",
                create_time=T0,
                update_time=T0,
            )
        )
        for log_id in log_ids:
            await conn.execute(
                sa.insert(DatasetLog).values(
                    project=project, dataset_id=dataset_id, log_id=log_id, add_time=T0
                )
            )


def log_id(n: int) -> str:
    return f"{n:024x}"


@pytest.fixture
async def dataset(store: Store) -> list[str]:
    """Dataset `d1` of project p1 with three logs: two answered, one failed."""
    ids = [log_id(1), log_id(2), log_id(3)]
    await add_log(store, ids[0], text="alpha beta gamma", latency_ms=100)
    await add_log(store, ids[1], text="one two three four", latency_ms=300, thoughts_tokens=5)
    await add_log(store, ids[2], status="UNAVAILABLE", latency_ms=50)
    await add_dataset(store, "d1", ids)
    return ids


async def new_run(store: Store, prices: PriceTable, **fields: Any) -> RunKey:
    values: dict[str, Any] = {"model": PRO, "mode": "direct", "concurrency": 4, "prices": prices}
    values.update(fields)
    run = await create_run(store, "p1", "d1", **values)
    return run.key


async def test_create_copies_the_originals_newest_first(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    run = await create_run(
        store,
        "p1",
        "d1",
        model=PRO,
        mode="batch",
        concurrency=8,
        system_instruction_json='{"parts":[{"text":"be brief"}]}',
        generation_config_json='{"temperature":0.5}',
        prices=prices,
        now=T0,
    )
    assert run.key.project == "p1" and run.key.dataset_id == "d1"
    assert run.key.name == f"projects/p1/datasets/d1/runs/{run.key.run_id}"
    assert (run.model, run.mode, run.state, run.concurrency) == (PRO, "batch", "pending", 8)
    assert run.create_time == T0 and run.end_time is None and not run.done
    assert run.system_instruction_json == '{"parts":[{"text":"be brief"}]}'
    assert run.generation_config_json == '{"temperature":0.5}'
    assert run.request_count == 3 and run.results is None

    full = await get_run(store, run.key, prices, full=True)
    assert full is not None and full.results is not None
    assert [r.log_id for r in full.results] == dataset[::-1]
    assert [r.position for r in full.results] == [0, 1, 2]
    failed, second, first = full.results
    assert first.original == CallOutput(
        model=FLASH,
        text="alpha beta gamma",  # the thought is not part of the text
        finish_reason="STOP",
        tokens=Tokens(prompt=10, candidates=20, total=30),
        latency_ms=100.0,
    )
    assert second.original.tokens == Tokens(prompt=10, candidates=20, thoughts=5, total=35)
    assert failed.original.failed
    assert failed.original.error_code == 14
    assert failed.original.error_message == "the model is overloaded"
    assert all(r.rerun is None and r.response_json == "" for r in full.results)

    summary = full.summary
    assert summary.request_count == 3
    assert summary.completed_count == summary.failed_count == summary.same_text_count == 0
    assert summary.original_tokens == Tokens(prompt=30, candidates=40, thoughts=5, total=75)
    assert summary.original_latency_p50_ms == 100.0
    assert summary.rerun_latency_p50_ms is None
    expected = sum(
        prices.cost(FLASH, False, TokenSums(prompt=10, candidates=c, thoughts=t))
        for c, t in ((20, 0), (20, 5), (0, 0))
    )
    assert summary.original_cost == pytest.approx(expected)
    assert summary.original_cost > 0 and summary.rerun_cost == 0


async def test_missing_and_empty_datasets(store: Store, prices: PriceTable) -> None:
    await add_log(store, log_id(1), project="p2")
    await add_dataset(store, "other", [log_id(1)], project="p2")
    await add_dataset(store, "empty", [])
    with pytest.raises(NoSuchDataset, match="projects/p1/datasets/nothing"):
        await create_run(
            store, "p1", "nothing", model=PRO, mode="direct", concurrency=4, prices=prices
        )
    # Another project's dataset does not exist for p1.
    with pytest.raises(NoSuchDataset):
        await create_run(
            store, "p1", "other", model=PRO, mode="direct", concurrency=4, prices=prices
        )
    with pytest.raises(EmptyDataset, match="holds no logs"):
        await create_run(
            store, "p1", "empty", model=PRO, mode="direct", concurrency=4, prices=prices
        )
    assert await dataset_exists(store, "p1", "empty")
    assert not await dataset_exists(store, "p1", "other")


async def test_requests_are_read_in_order_and_by_page(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices)
    first = await run_requests(store, key, limit=2)
    assert [(r.log_id, r.position) for r in first] == [(dataset[2], 0), (dataset[1], 1)]
    assert json.loads(first[0].request_json or "")["contents"][0]["parts"][0]["text"] == (
        f"prompt of {dataset[2]}"
    )
    rest = await run_requests(store, key, after_position=1, limit=2)
    assert [r.log_id for r in rest] == [dataset[0]]
    # A log deleted after the run was created: its result stays, its request is gone.
    async with store.begin() as conn:
        await conn.execute(sa.delete(RequestLog).where(RequestLog.id == dataset[0]))
    (gone,) = await run_requests(store, key, after_position=1)
    assert gone.log_id == dataset[0] and gone.request_json is None
    run = await get_run(store, key, prices, full=True)
    assert run is not None and run.results is not None
    assert run.results[2].original.text == "alpha beta gamma"


async def test_answers_are_compared_and_summarised(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices)
    same = CallOutput(
        model=PRO,
        text="alpha beta gamma",
        finish_reason="STOP",
        tokens=Tokens(prompt=10, candidates=30, total=40),
        latency_ms=200.0,
    )
    changed = CallOutput(
        model=PRO,
        text="one two three five",
        finish_reason="MAX_TOKENS",
        tokens=Tokens(prompt=10, candidates=10, total=20),
        latency_ms=400.0,
    )
    failed = CallOutput(model=PRO, error_code=8, error_message="quota")
    await record_answers(store, key, [RerunAnswer(dataset[0], same, response_json("alpha"))])
    partial = await get_run(store, key, prices)
    assert partial is not None and partial.summary.completed_count == 1  # progress shows
    await record_answers(
        store,
        key,
        [
            RerunAnswer(dataset[1], changed, '{"candidates":[]}'),
            RerunAnswer(dataset[2], failed),
            RerunAnswer(log_id(99), same),  # not in the run: ignored
        ],
    )
    run = await get_run(store, key, prices, full=True)
    assert run is not None and run.results is not None
    by_log = {r.log_id: r for r in run.results}
    assert by_log[dataset[0]].same_text and by_log[dataset[0]].text_similarity == 1.0
    assert by_log[dataset[0]].rerun == same
    assert by_log[dataset[0]].response_json == response_json("alpha")
    assert not by_log[dataset[1]].same_text
    assert by_log[dataset[1]].text_similarity == pytest.approx(0.75)
    assert by_log[dataset[2]].rerun == failed
    assert not by_log[dataset[2]].same_text and by_log[dataset[2]].text_similarity == 0.0
    assert by_log[dataset[0]].rerun_cost == pytest.approx(
        prices.cost(PRO, False, TokenSums(prompt=10, candidates=30))
    )

    summary = run.summary
    assert summary.completed_count == 3
    assert summary.failed_count == 1
    assert summary.same_text_count == 1
    assert summary.mean_text_similarity == pytest.approx(statistics.fmean([1.0, 0.75]))
    assert summary.rerun_tokens == Tokens(prompt=20, candidates=40, total=60)
    assert summary.rerun_cost == pytest.approx(sum(r.rerun_cost for r in run.results))
    assert summary.rerun_latency_p50_ms == 300.0

    # BASIC reads carry the same summary, without results.
    basic = await get_run(store, key, prices)
    assert basic is not None and basic.results is None and basic.summary == summary


async def test_costs_follow_the_price_table_of_the_read(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices)
    cheap = PriceTable.from_toml(
        """
read_on = 2026-01-01
source = "https://example.com/prices"
batch_discount = 0.5
[default]
input = 1.0
output = 2.0
cached_input = 0.5
"""
    )
    run = await get_run(store, key, cheap)
    assert run is not None
    # 30 prompt tokens at $1/M and 40 output tokens + 5 thoughts at $2/M.
    assert run.summary.original_cost == pytest.approx((30 * 1.0 + 45 * 2.0) / 1_000_000)


async def test_states_move_forward_only(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices, mode="batch")
    assert await set_run_state(store, key, "running", batch="batches/abc")
    run = await get_run(store, key, prices)
    assert run is not None
    assert (run.state, run.batch, run.end_time) == ("running", "batches/abc", None)
    end = T0 + timedelta(hours=1)
    assert await set_run_state(store, key, "failed", error_code=1, error_message="stop", now=end)
    run = await get_run(store, key, prices)
    assert run is not None and run.done
    assert (run.state, run.error_code, run.error_message, run.end_time) == (
        "failed",
        1,
        "stop",
        end,
    )
    # An ended run never changes again.
    assert not await set_run_state(store, key, "succeeded")
    run = await get_run(store, key, prices)
    assert run is not None and run.state == "failed"
    assert not await set_run_state(store, RunKey("p1", "d1", "nothing"), "running")


async def test_runs_whose_lease_ran_out_are_failed_and_the_others_kept(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    # Leased for 60 s from T0; one renewed until T0 + 2 min, one ended, one without a lease
    # (written before leases were kept).
    live, lapsed, ended, unleased = [
        await new_run(store, prices, now=T0, lease_s=60) for _ in range(4)
    ]
    assert await set_run_state(store, lapsed, "running")
    assert await set_run_state(store, ended, "succeeded", now=T0)
    assert await renew_run_leases(store, [live], lease_s=120, now=T0) == []
    async with store.begin() as conn:
        await conn.execute(
            sa.update(DatasetRun)
            .where(DatasetRun.run_id == unleased.run_id)
            .values(lease_until=None)
        )

    assert await fail_abandoned_runs(store, now=T0 + timedelta(seconds=59)) == [unleased]
    failed = await fail_abandoned_runs(store, now=T0 + timedelta(seconds=61))
    assert failed == [lapsed]
    for key in (unleased, lapsed):
        run = await get_run(store, key, prices)
        assert run is not None
        assert (run.state, run.error_code, run.error_message) == (
            "failed",
            14,  # UNAVAILABLE
            ABANDONED_MESSAGE,
        )
    assert run.end_time == T0 + timedelta(seconds=61)
    kept = [await get_run(store, key, prices) for key in (live, ended)]
    assert [run.state if run else None for run in kept] == ["pending", "succeeded"]
    # Renewing reports the runs that are no longer this process's to run.
    gone = await renew_run_leases(
        store, [live, lapsed, RunKey("p1", "d1", "deleted")], now=T0 + timedelta(seconds=62)
    )
    assert gone == [lapsed, RunKey("p1", "d1", "deleted")]
    assert await fail_abandoned_runs(store, now=T0 + timedelta(seconds=119)) == []


async def test_lapsed_batch_runs_with_a_batch_are_adopted_and_the_rest_failed(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    # All leased for 60 s from T0: a batch run with its batch submitted, one without, a
    # direct run, a submitted batch run renewed until T0 + 2 min, and one that ended.
    submitted, unsubmitted, direct, renewed, ended = [
        await new_run(store, prices, now=T0, lease_s=60, mode=mode)
        for mode in ("batch", "batch", "direct", "batch", "batch")
    ]
    for key in (submitted, renewed, ended):
        assert await set_run_state(store, key, "running", batch=f"batches/{key.run_id}")
    assert await set_run_state(store, ended, "succeeded", now=T0)
    assert await renew_run_leases(store, [renewed], lease_s=120, now=T0) == []

    assert await adopt_batch_runs(store, now=T0 + timedelta(seconds=59)) == []
    later = T0 + timedelta(seconds=61)
    adopted = await adopt_batch_runs(store, lease_s=30, now=later)
    assert adopted == [AdoptedRun(submitted, PRO, f"batches/{submitted.run_id}")]
    # Adopted once: leased to the adopter, neither adopted again nor failed.
    assert await adopt_batch_runs(store, now=later) == []
    assert sorted(await fail_abandoned_runs(store, now=later), key=str) == sorted(
        [unsubmitted, direct], key=str
    )
    run = await get_run(store, submitted, prices)
    assert run is not None and run.state == "running"
    # Its lease runs out in turn unless the adopter renews it.
    assert await adopt_batch_runs(store, now=later + timedelta(seconds=31)) == adopted


async def test_a_stopping_process_hands_over_only_submitted_batch_runs(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    submitted, unsubmitted, direct = [
        await new_run(store, prices, now=T0, lease_s=60, mode=mode)
        for mode in ("batch", "batch", "direct")
    ]
    assert await set_run_state(store, submitted, "running", batch="batches/b1")
    keys = [submitted, unsubmitted, direct, RunKey("p1", "d1", "deleted")]
    assert await hand_over_batch_runs(store, keys, now=T0 + timedelta(seconds=1)) == [submitted]
    # Its lease ended when handed over: the next sweep adopts it.
    adopted = await adopt_batch_runs(store, now=T0 + timedelta(seconds=2))
    assert [run.key for run in adopted] == [submitted]


async def test_unanswered_requests_are_those_without_an_answer(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices, mode="batch")
    order = await unanswered_log_ids(store, key)
    assert sorted(order) == sorted(dataset)
    answer = RerunAnswer(order[1], CallOutput(model=PRO, error_code=5, error_message="gone"))
    await record_answers(store, key, [answer])
    assert await unanswered_log_ids(store, key) == [order[0], order[2]]


async def test_list_is_newest_first_and_paged(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    keys = [await new_run(store, prices) for _ in range(3)]
    await record_answers(
        store, keys[0], [RerunAnswer(dataset[0], CallOutput(model=PRO, text="alpha beta gamma"))]
    )
    page, token = await list_runs(store, "p1", "d1", prices, page_size=2)
    assert [run.key for run in page] == keys[::-1][:2]
    assert token and all(run.results is None for run in page)
    rest, last = await list_runs(store, "p1", "d1", prices, page_size=2, page_token=token)
    assert [run.key for run in rest] == keys[:1] and last == ""
    assert rest[0].summary.completed_count == 1 and rest[0].summary.same_text_count == 1
    everything, _ = await list_runs(store, "p1", "d1", prices)
    assert len(everything) == 3
    # Another project sees none of them; a token works for its own list only.
    assert await list_runs(store, "p2", "d1", prices) == ([], "")
    with pytest.raises(ValueError, match="page_token"):
        await list_runs(store, "p1", "d2", prices, page_token=token)
    with pytest.raises(ValueError, match="page_token"):
        await list_runs(store, "p1", "d1", prices, page_token="not-a-token")


async def test_other_projects_cannot_read_a_run(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices)
    assert await get_run(store, RunKey("p2", key.dataset_id, key.run_id), prices) is None


async def test_deleting_the_dataset_deletes_its_runs(
    store: Store, prices: PriceTable, dataset: list[str]
) -> None:
    key = await new_run(store, prices)
    async with store.begin() as conn:
        await conn.execute(sa.delete(DatasetRow).where(DatasetRow.dataset_id == "d1"))
    assert await get_run(store, key, prices) is None
    # A run still executing finds nothing to write to, and fails no write.
    await record_answers(store, key, [RerunAnswer(dataset[0], CallOutput(model=PRO))])
    assert not await set_run_state(store, key, "succeeded")


def test_text_helpers() -> None:
    assert text_similarity("a b c d", "a b c d") == 1.0
    assert text_similarity("a b", "c d") == 0.0
    assert text_similarity("a b c d", "a b x d") == pytest.approx(0.75)
    assert text_similarity("", "") == 1.0
    assert first_candidate_text(response_json("x", thought="y")) == "x"
    assert first_candidate_text("") == ""
    assert first_candidate_text("not json") == ""
    assert first_candidate_text('{"candidates": []}') == ""
