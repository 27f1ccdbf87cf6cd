"""ListLogs filters on SQLite and PostgreSQL: every field, dataset membership and free text
(FTS5 / PostgreSQL full-text), including hostile and non-ASCII text, and the errors."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.logs import list_logs, log_condition, log_ids_select
from tests.store.support import T0
from tests.store.test_logs import (
    Candidate,
    add_to_dataset,
    all_pages,
    event,
    log_id,
    request,
    response,
    write,
)

FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
EVERY = [6, 4, 3, 2, 1]


@pytest.fixture
async def corpus(store: Store) -> Store:
    """Five logs of p1 that differ in every filterable way, one of p2, and datasets."""
    await write(
        store,
        [
            event(1, labels={"team": "search", "env": "prod"},
                  request=request("How do I get a refund for my order?"),
                  responses=[response("You can request a refund in settings.")]),
            event(2, model=PRO, method="StreamGenerateContent", caller="bob",
                  labels={"team": "ads"}, latency_ms=3200.0, first_chunk_ms=450.0,
                  prompt_tokens=2000, candidates_tokens=300, cached_tokens=1000,
                  thoughts_tokens=500, total_tokens=2800,
                  request=request("Écris un poème sur le café"),
                  responses=[response("Le café du matin", finish=Candidate.MAX_TOKENS)]),
            event(3, api_version="v1", status="RESOURCE_EXHAUSTED", error_message="quota",
                  latency_ms=50.0, request=request("Summarise this text: 日本語のテキスト"),
                  responses=[], prompt_tokens=0, candidates_tokens=0, total_tokens=0),
            event(4, model=PRO, method="StreamGenerateContent", caller="carol",
                  status="CANCELLED", incomplete=True, labels={"team": "search"},
                  latency_ms=1500.0, first_chunk_ms=900.0,
                  request=request("Is it a OR NOT question? NEAR(x y)"),
                  responses=[response("partial", finish=0)]),
            event(5, project="p2", request=request("refund please")),
            event(6, model="tunedModels/support-bot", labels={"team": "équipe"},
                  latency_ms=2500.0,
                  request=request("Translate hola to English", system="You are a translator"),
                  responses=[response("hello")]),
        ],
    )  # fmt: skip
    await add_to_dataset(store, "p1", "golden", [log_id(1), log_id(2)])
    await add_to_dataset(store, "p1", "other", [log_id(2)])
    await add_to_dataset(store, "p2", "golden", [log_id(5)])
    return store


CASES = [
    ("", EVERY),
    ("   ", EVERY),
    # Strings and enums.
    (f'model = "{PRO}"', [4, 2]),
    (f'model != "{PRO}"', [6, 3, 1]),
    ("model = tunedModels/support-bot", [6]),
    ("method = StreamGenerateContent", [4, 2]),
    ("api_version = v1", [3]),
    ("status = OK", [6, 2, 1]),
    ("status != OK", [4, 3]),
    ("status = RESOURCE_EXHAUSTED OR status = CANCELLED", [4, 3]),
    ("caller = alice", [6, 3, 1]),
    ('caller = "bob" OR caller = carol', [4, 2]),
    ("finish_reason = STOP", [6, 1]),
    ("finish_reason = MAX_TOKENS", [2]),
    ('finish_reason = ""', [4, 3]),
    # Labels.
    ("labels.team = search", [4, 1]),
    ("labels.team != search", [6, 3, 2]),  # a log without the label is not "search"
    ("labels.team:*", [6, 4, 2, 1]),
    ("-labels.team:*", [3]),
    ('labels.team = "équipe"', [6]),
    ("labels.env = prod AND labels.team = search", [1]),
    ("labels.nope = x", []),
    # Times.
    ('create_time >= "2026-03-01T00:02:00Z"', [6, 4, 3, 2]),
    ('create_time < "2026-03-01T00:02:00Z"', [1]),
    ('create_time >= "2026-03-01T00:02:00Z" AND create_time < "2026-03-01T00:04:00Z"', [3, 2]),
    ('create_time = "2026-03-01T01:03:00+01:00"', [3]),
    ('create_time > "2026-03-01T00:03:59.999999Z"', [6, 4]),
    # Numbers: latency in seconds, durations allowed.
    ("latency > 2.5s", [2]),
    ("latency >= 2.5", [6, 2]),
    ("latency < 0.1", [3]),
    ("latency >= 1 AND latency <= 2", [4]),
    ("time_to_first_chunk < 0.5", [2]),
    ("time_to_first_chunk:*", [4, 2]),
    ("time_to_first_chunk > 0s", [4, 2]),
    ("-time_to_first_chunk:*", [6, 3, 1]),
    ("tokens.prompt > 1000", [2]),
    ("tokens.candidates = 300", [2]),
    ("tokens.cached = 1000", [2]),
    ("tokens.thoughts > 0", [2]),
    ("tokens.total >= 2800", [2]),
    ("tokens.total = 0", [3]),
    ('tokens.prompt = "2000"', [2]),
    ("incomplete = true", [4]),
    ("incomplete = FALSE", [6, 3, 2, 1]),
    # Datasets.
    ("dataset = golden", [2, 1]),
    ('dataset = "projects/p1/datasets/golden"', [2, 1]),
    ('dataset = "projects/-/datasets/other"', [2]),
    ('dataset = "projects/p2/datasets/golden"', []),
    ('dataset != "projects/p2/datasets/golden"', EVERY),
    ("dataset = nope", []),
    ("dataset != golden", [6, 4, 3]),
    ("dataset:golden", [2, 1]),
    ("dataset:*", [2, 1]),
    ("-dataset:*", [6, 4, 3]),
    ("dataset = golden AND dataset = other", [2]),
    ("dataset = other OR status != OK", [4, 3, 2]),
    # Free text: every word, any case, prompt, system instruction and response.
    ("refund", [1]),  # not p2's
    ("REFUND", [1]),
    ('"request a refund"', [1]),
    ("refund settings", [1]),
    ('"settings refund"', [1]),
    ("refund elephant", []),
    ("translator", [6]),  # system instruction
    ("hello", [6]),  # response
    ("café", [2]),
    ("cafe", []),  # accents are kept
    ("POÈME", [2]),
    ('"日本語のテキスト"', [3]),
    ("refund OR café", [2, 1]),
    ("-refund", [6, 4, 3, 2]),
    (f'model = "{FLASH}" AND refund', [1]),
    ("labels.team = search AND NOT refund", [4]),
    # Free text that FTS5 or tsquery syntax would read: taken as plain words.
    ("'\"a\" OR NOT*('", [4]),
    ('"NEAR(x y)"', [4]),
    ("refund*", [1]),
    ('"^refund"', [1]),
    ('"search_text:refund"', []),
    ('"refund\'; DROP TABLE request_logs; --"', []),
    ('"a & !b | c:*"', []),
    ("'\"unterminated'", []),
    # No letter or digit: matches nothing, so its negation matches everything.
    ('"?!"', []),
    ('"*"', []),
    ("'\"\"'", []),
    ('NOT "?!"', EVERY),
    ('"\\u0000"', []),
    ('model = "\\u0000"', []),
    ('model != "a\\u0000b"', EVERY),
]


@pytest.mark.parametrize(("filter_text", "expected"), CASES, ids=[c[0] or "empty" for c in CASES])
async def test_filter(corpus: Store, filter_text: str, expected: list[int]) -> None:
    assert await all_pages(corpus, filter_text=filter_text, page_size=2) == expected


async def test_every_filter_field_is_covered() -> None:
    fields = ["model", "method", "api_version", "status", "caller", "labels.", "create_time",
              "latency", "time_to_first_chunk", "tokens.prompt", "tokens.candidates",
              "tokens.cached", "tokens.thoughts", "tokens.total", "incomplete",
              "finish_reason", "dataset"]  # fmt: skip
    used = " ".join(text for text, _ in CASES)
    assert [name for name in fields if name not in used] == []


async def test_the_hostile_filters_left_the_table_alone(corpus: Store) -> None:
    await all_pages(corpus, filter_text='"refund\'; DROP TABLE request_logs; --"')
    assert await all_pages(corpus) == EVERY


@pytest.mark.parametrize(
    ("filter_text", "message"),
    [
        ("nope = 1", "unknown field"),
        ("labels.Team = x", "labels.Team"),
        ("status = OKAY", "one of OK"),
        ("latency = fast", "expects a number"),
        ("tokens.prompt = abc", "expects a number"),
        ('create_time > "yesterday"', "RFC 3339"),
        ("create_time > 5", "RFC 3339"),
        ("incomplete > true", "does not apply"),
        ("incomplete = maybe", "true or false"),
        ("dataset > golden", "does not apply"),
        ('dataset = "projects/p1/things/x"', "dataset id or name"),
        ('dataset = ""', "dataset id or name"),
        ("model = ", "expected a value"),
        ("(refund", "never closed"),
    ],
)
async def test_bad_filters_are_refused(corpus: Store, filter_text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        await list_logs(corpus, "p1", filter_text=filter_text)
    with pytest.raises(FilterError, match=message):
        log_condition("p1", filter_text, corpus.dialect)


def test_an_unknown_field_is_told_the_allowed_ones() -> None:
    with pytest.raises(FilterError) as caught:
        log_condition("p1", "modle = x", "sqlite")
    for name in ("dataset", "labels.<key>", "tokens.total", "time_to_first_chunk"):
        assert name in str(caught.value)


async def test_log_ids_select_matches_what_list_logs_lists(corpus: Store) -> None:
    for filter_text in ("dataset = golden OR caf\u00e9", "-refund AND status = OK", ""):
        query = log_ids_select("p1", filter_text, corpus.dialect).order_by(sa.text("1 DESC"))
        async with corpus.connect() as conn:
            ids = list((await conn.execute(query)).scalars())
        listed, _ = await list_logs(corpus, "p1", filter_text=filter_text)
        assert ids == [record.id for record in listed]


async def test_a_long_text_is_searchable_up_to_its_limit(store: Store) -> None:
    words = " ".join(f"w{i}" for i in range(30_000))  # ~200,000 characters
    await write(store, [event(1, request=request(words + " needle"), create_time=T0)])
    assert await all_pages(store, filter_text="w10") == [1]
    assert await all_pages(store, filter_text="needle") == []  # beyond MAX_SEARCH_CHARS
    assert await all_pages(store, filter_text="w29999 OR w1") == [1]
