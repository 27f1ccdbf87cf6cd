"""The AIP-160 filter subset: parsing, errors, and compiled SQL run against SQLite."""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from gemini_gateway.server.filters import (
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    And,
    Comparison,
    FilterError,
    FilterField,
    Not,
    Or,
    Text,
    Value,
    compile_filter,
    field_resolver,
    parse_filter,
)

# --- helpers for reading trees -------------------------------------------------------------


def shape(expr: object) -> object:
    """A compact, position-free picture of a tree, so tests read like the grammar."""
    match expr:
        case And(operands):
            return ("AND", *(shape(o) for o in operands))
        case Or(operands):
            return ("OR", *(shape(o) for o in operands))
        case Not(operand):
            return ("NOT", shape(operand))
        case Text(value):
            return value.text
        case Comparison(field, op, value):
            return (field, op, value.text)
    raise AssertionError(expr)


def one_value(text: str) -> Value:
    expr = parse_filter(f"x = {text}")
    assert isinstance(expr, Comparison)
    return expr.value


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\t\n  "])
def test_empty_filter_is_no_condition(text: str) -> None:
    assert parse_filter(text) is None


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">=", ":"])
def test_every_comparator(op: str) -> None:
    assert shape(parse_filter(f"usage.total_tokens {op} 5")) == ("usage.total_tokens", op, "5")
    assert shape(parse_filter(f"usage.total_tokens{op}5")) == ("usage.total_tokens", op, "5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # OR binds tighter than AND and than adjacency.
        ("a OR b c", ("AND", ("OR", "a", "b"), "c")),
        ("a AND b OR c", ("AND", "a", ("OR", "b", "c"))),
        ("a OR b AND c OR d", ("AND", ("OR", "a", "b"), ("OR", "c", "d"))),
        ("a b c", ("AND", "a", "b", "c")),
        ("a AND b c", ("AND", "a", "b", "c")),
        ("a OR b OR c", ("OR", "a", "b", "c")),
        # Parentheses override it.
        ("(a AND b) OR c", ("OR", ("AND", "a", "b"), "c")),
        ("((a))", "a"),
        ("(a b) (c)", ("AND", "a", "b", "c")),
        # Negation applies to one term.
        ("NOT a b", ("AND", ("NOT", "a"), "b")),
        ("-a OR b", ("OR", ("NOT", "a"), "b")),
        ("NOT (a OR b)", ("NOT", ("OR", "a", "b"))),
        ("NOT NOT a", ("NOT", ("NOT", "a"))),
        ("--a", ("NOT", ("NOT", "a"))),
        ("-labels.team:*", ("NOT", ("labels.team", ":", "*"))),
        ("NOT model = x", ("NOT", ("model", "=", "x"))),
        # Keywords are upper case only; other spellings are search words.
        ("a and b", ("AND", "a", "and", "b")),
        ("ANDROID OR NOTE", ("OR", "ANDROID", "NOTE")),
        ("NOT-a", "NOT-a"),
        # Free text mixes with comparisons.
        ('"big job" model = gemini-2.5-pro', ("AND", "big job", ("model", "=", "gemini-2.5-pro"))),
        ("labels.team:* flash", ("AND", ("labels.team", ":", "*"), "flash")),
        ("models/gemini-2.5-pro", "models/gemini-2.5-pro"),
    ],
)
def test_precedence_negation_and_nesting(text: str, expected: object) -> None:
    assert shape(parse_filter(text)) == expected


def test_nodes_record_their_columns() -> None:
    expr = parse_filter('a = 1 NOT labels.team != "x"')
    assert isinstance(expr, And)
    first, negated = expr.operands
    assert isinstance(first, Comparison) and first.column == 1 and first.value.column == 5
    assert isinstance(negated, Not) and negated.column == 7
    assert isinstance(negated.operand, Comparison) and negated.operand.column == 11
    assert negated.operand.value.column == 26


def test_field_paths_allow_dashes_and_international_letters() -> None:
    assert shape(parse_filter("labels.cost-center = 42")) == ("labels.cost-center", "=", "42")
    assert shape(parse_filter("labels.équipe = nord")) == ("labels.équipe", "=", "nord")


@pytest.mark.parametrize(
    ("literal", "kind", "value"),
    [
        ('"plain"', "string", "plain"),
        ("'single'", "string", "single"),
        ('""', "string", ""),
        ("gemini-2.5-pro", "word", "gemini-2.5-pro"),
        ("*", "word", "*"),
        ("42", "int", 42),
        ("-7", "int", -7),
        ("0", "int", 0),
        ("2.5", "float", 2.5),
        ("-.5", "float", -0.5),
        ("1e3", "float", 1000.0),
        ("6.02E-3", "float", 0.00602),
        ("true", "bool", True),
        ("FALSE", "bool", False),
        ("1.5s", "duration", timedelta(seconds=1.5)),
        ("30s", "duration", timedelta(seconds=30)),
        ('"2025-01-02T03:04:05Z"', "timestamp", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (
            '"2025-01-02T03:04:05.25+01:00"',
            "timestamp",
            datetime(2025, 1, 2, 2, 4, 5, 250000, tzinfo=UTC),
        ),
        (
            '"2025-01-02t03:04:05.123456789z"',
            "timestamp",
            datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        ),
        ('"2025-02-30T00:00:00Z"', "string", "2025-02-30T00:00:00Z"),
        ('"2025-01-02"', "string", "2025-01-02"),
    ],
)
def test_every_literal_kind(literal: str, kind: str, value: object) -> None:
    parsed = one_value(literal)
    assert parsed.kind == kind
    assert parsed.value == value
    assert parsed.quoted == literal.startswith(("'", '"'))


def test_string_escapes() -> None:
    parsed = one_value(r'"a\"b\\c\nd\te\u00e9\/\*' + "'" + '"')
    assert parsed.text == "a\"b\\c\nd\te\u00e9/*'"
    assert one_value(r"'it\'s'").text == "it's"


def test_the_tree_is_immutable_and_hashable() -> None:
    expr = parse_filter("a = 1 OR b")
    assert expr is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        expr.operands = ()  # type: ignore[misc, union-attr]
    assert hash(expr) == hash(parse_filter("a = 1 OR b"))
    assert expr == parse_filter("a = 1 OR b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model = ", "filter: expected a value after '=' at column 9"),
        ("model =", "filter: expected a value after '=' at column 8"),
        ("a = )", "filter: expected a value after '=', found ')' at column 5"),
        ("a = = b", "filter: expected a value after '=', found '=' at column 5"),
        (
            "a = AND b",
            "filter: expected a value after '=', found 'AND' at column 5; quote it to use the word",
        ),
        ("a AND", "filter: expected a term after 'AND' at column 6"),
        ("a OR", "filter: expected a term after 'OR' at column 5"),
        ("a OR AND b", "filter: expected a term after 'OR' at column 6"),
        ("NOT", "filter: expected a term after 'NOT' at column 4"),
        ("(NOT )", "filter: expected a term after 'NOT' at column 6"),
        ("- a", "filter: expected a term right after '-' at column 2"),
        ("a -", "filter: expected a term right after '-' at column 4"),
        ("AND a", "filter: expected a term, found 'AND' at column 1"),
        ("OR", "filter: expected a term, found 'OR' at column 1"),
        ("()", "filter: expected a term after '(' at column 2"),
        ("(a", "filter: '(' at column 1 is never closed; expected ')' at column 3"),
        ("(a OR (b)", "filter: '(' at column 1 is never closed; expected ')' at column 10"),
        ("a)", "filter: unexpected ')' with no '(' to close at column 2"),
        ("a !b", "filter: unexpected '!' at column 3"),
        ("a ! = b", "filter: unexpected '!' at column 3"),
        ("=", "filter: unexpected '=' at column 1"),
        ("a b = c = d", "filter: unexpected '=' at column 9"),
        ('"q" = 1', "filter: expected a field name before '=', found a quoted string at column 1"),
        (
            "a..b = 1",
            'filter: invalid field name "a..b" at column 1; '
            "fields are names joined by dots, such as labels.team",
        ),
        (
            "labels.* = 1",
            'filter: invalid field name "labels.*" at column 1; '
            "fields are names joined by dots, such as labels.team",
        ),
        ('x = "abc', 'filter: unterminated string at column 5; add the closing "'),
        ("x = 'abc\\'", "filter: unterminated string at column 5; add the closing '"),
        ('x = "a\\qb"', "filter: unknown escape '\\q' at column 7"),
        ('x = "\\u12"', "filter: expected four hex digits after '\\u' at column 6"),
        ('x = "\\ud800"', "filter: '\\u' escape names a lone surrogate at column 6"),
        (
            "x = 99999999999999999999s",
            'filter: duration "99999999999999999999s" is out of range at column 5',
        ),
        ("a \x07", "filter: unexpected U+0007 at column 3"),
        ("a \ud800", "filter: not valid Unicode text (a lone surrogate) at column 3"),
    ],
)
def test_errors_name_the_position_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_deep_nesting_is_a_filter_error_not_recursion_error() -> None:
    with pytest.raises(FilterError, match="longer than 4096 characters"):
        parse_filter("(" * 10_000)
    with pytest.raises(FilterError, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_filter("(" * 1000 + "a")
    with pytest.raises(FilterError, match="nested more than"):
        parse_filter("NOT " * (MAX_DEPTH + 1) + "a")
    with pytest.raises(FilterError, match="nested more than"):
        parse_filter("-" * (MAX_DEPTH + 1) + "a")


def test_nesting_up_to_the_cap_is_fine() -> None:
    assert shape(parse_filter("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)) == "a"
    assert parse_filter("-" * MAX_DEPTH + "a") is not None


def test_length_cap() -> None:
    assert parse_filter("a" * MAX_FILTER_LENGTH) is not None
    with pytest.raises(FilterError, match="longer than"):
        parse_filter("a" * (MAX_FILTER_LENGTH + 1))


def test_long_flat_filters_do_not_recurse() -> None:
    expr = parse_filter(" OR ".join(["a"] * 800))
    assert isinstance(expr, Or) and len(expr.operands) == 800
    expr = parse_filter(" ".join(["b"] * 2000))
    assert isinstance(expr, And) and len(expr.operands) == 2000


# --- compiling against SQLite ------------------------------------------------------------

metadata = MetaData()
calls = Table(
    "calls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model", String, nullable=False),
    Column("labels", JSON, nullable=True),
    Column("create_time", DateTime, nullable=False),
    Column("total_tokens", Integer, nullable=True),
    Column("streamed", Boolean, nullable=False),
    Column("status", String, nullable=False),
    Column("latency", Float, nullable=True),
)

ROWS = [
    (1, "gemini-2.5-pro", {"team": "search", "env": "prod"}, 1, 1000, True, "OK", 0.5),
    (2, "gemini-2.5-flash", {"team": "ads"}, 2, 50, False, "OK", 2.0),
    (3, "gemini-2.5-flash", {}, 3, 0, False, "INVALID_ARGUMENT", 0.1),
    (4, "gemini-2.0-flash", None, 4, 200_000, True, "OK", None),
    (5, "gemini-2.5-pro", {"team": "search", "cost-center": "42"}, 5, None, False, "OK", 1.0),
]


@functools.cache
def database() -> Engine:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(calls),
            [
                {
                    "id": row_id,
                    "model": model,
                    "labels": labels,
                    "create_time": datetime(2025, 1, day, 10, 0, 0),
                    "total_tokens": tokens,
                    "streamed": streamed,
                    "status": status,
                    "latency": latency,
                }
                for row_id, model, labels, day, tokens, streamed, status, latency in ROWS
            ],
        )
    return engine


def label(key: str) -> FilterField:
    return FilterField(func.json_extract(calls.c.labels, f'$."{key}"'), "string")


resolve = field_resolver(
    {
        "model": FilterField(calls.c.model, "string"),
        "create_time": FilterField(calls.c.create_time, "timestamp"),
        "usage.total_tokens": FilterField(calls.c.total_tokens, "number"),
        "streamed": FilterField(calls.c.streamed, "bool"),
        "status": FilterField(calls.c.status, "enum", ("OK", "INVALID_ARGUMENT")),
        "latency": FilterField(calls.c.latency, "number"),
    },
    {"labels": label},
)


def search(term: str) -> ColumnElement[bool]:
    return calls.c.model.contains(term, autoescape=True)


def matching(text: str, *, free_text: bool = True) -> list[int]:
    expr = parse_filter(text)
    query = select(calls.c.id).order_by(calls.c.id)
    if expr is not None:
        query = query.where(compile_filter(expr, resolve, search if free_text else None))
    with database().connect() as conn:
        return list(conn.scalars(query))


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("", [1, 2, 3, 4, 5]),
        ('model = "gemini-2.5-pro"', [1, 5]),
        ("model = gemini-2.5-pro", [1, 5]),
        ("model:gemini-2.5-flash", [2, 3]),
        ('model:"*"', []),
        ("model:*", [1, 2, 3, 4, 5]),
        ("model != gemini-2.5-pro", [2, 3, 4]),
        ("model > gemini-2.5", [1, 2, 3, 5]),
        # Labels: presence, equality, and NULL-as-not-equal.
        ("labels.team = search", [1, 5]),
        ("labels.team:search", [1, 5]),
        ("labels.team != search", [2, 3, 4]),
        ("NOT labels.team = search", [2, 3, 4]),
        ("labels.team:*", [1, 2, 5]),
        ("-labels.team:*", [3, 4]),
        ("NOT labels.team:*", [3, 4]),
        ("labels.cost-center = 42", [5]),
        ("labels.env = prod labels.team = search", [1]),
        ("labels.missing != x", [1, 2, 3, 4, 5]),
        # Numbers, with NULL never matching a range.
        ("usage.total_tokens > 100", [1, 4]),
        ("usage.total_tokens >= 50 AND usage.total_tokens <= 1000", [1, 2]),
        ("usage.total_tokens < 100", [2, 3]),
        ("NOT usage.total_tokens < 100", [1, 4, 5]),
        ("usage.total_tokens = 0", [3]),
        ('usage.total_tokens = "50"', [2]),
        ("usage.total_tokens > 1.5e2", [1, 4]),
        ("usage.total_tokens:*", [1, 2, 3, 4]),
        ("latency > 1s", [2]),
        ("latency <= 0.5", [1, 3]),
        ("latency >= 0.5s", [1, 2, 5]),
        # Timestamps, with offsets converted to UTC.
        (
            'create_time >= "2025-01-02T00:00:00Z" AND create_time < "2025-01-04T00:00:00Z"',
            [2, 3],
        ),
        ('create_time < "2025-01-02T11:00:00+01:00"', [1]),
        ('create_time <= "2025-01-02T11:00:00+01:00"', [1, 2]),
        ('create_time = "2025-01-05T10:00:00Z"', [5]),
        # Booleans and enums.
        ("streamed = true", [1, 4]),
        ("streamed = FALSE", [2, 3, 5]),
        ("streamed != true", [2, 3, 5]),
        ("status = OK", [1, 2, 4, 5]),
        ('status != "OK"', [3]),
        # Precedence against real rows: (4 or 2) and not streamed.
        ("model = gemini-2.0-flash OR labels.team = ads streamed = false", [2]),
        ("(model = gemini-2.0-flash OR labels.team = ads) AND streamed = true", [4]),
        ("model = gemini-2.0-flash OR (labels.team = ads AND streamed = true)", [4]),
        # Free text through the caller's search function.
        ("pro", [1, 5]),
        ('"2.5-flash" labels.team:*', [2]),
        ("-flash", [1, 5]),
        ("flash OR labels.env = prod", [1, 2, 3, 4]),
    ],
)
def test_compiled_filters_select_the_right_rows(text: str, ids: list[int]) -> None:
    assert matching(text) == ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "team = x",
            'filter: unknown field "team" at column 1; allowed fields: create_time, latency, '
            "model, status, streamed, usage.total_tokens, labels.<key>",
        ),
        (
            "labels = x",
            'filter: unknown field "labels" at column 1; allowed fields: create_time, latency, '
            "model, status, streamed, usage.total_tokens, labels.<key>",
        ),
        (
            "usage.total_tokens > abc",
            'filter: field "usage.total_tokens" expects a number, got "abc" at column 22',
        ),
        (
            "usage.total_tokens > 99999999999999999999",
            'filter: field "usage.total_tokens" expects a number within 64-bit range, '
            'got "99999999999999999999" at column 22',
        ),
        (
            "usage.total_tokens > 1e999",
            'filter: field "usage.total_tokens" expects a number, got "1e999" at column 22',
        ),
        (
            'create_time > "yesterday"',
            'filter: field "create_time" expects an RFC 3339 timestamp such as '
            '"2026-01-02T03:04:05Z", got "yesterday" at column 15',
        ),
        (
            "create_time > 2025",
            'filter: field "create_time" expects an RFC 3339 timestamp such as '
            '"2026-01-02T03:04:05Z", got "2025" at column 15',
        ),
        (
            "latency >= 500ms",
            'filter: field "latency" expects a number, got "500ms" at column 12',
        ),
        (
            "streamed = yes",
            'filter: field "streamed" expects true or false, got "yes" at column 12',
        ),
        (
            "streamed < true",
            "filter: operator '<' does not apply to bool field \"streamed\" at column 1; "
            "use = or !=",
        ),
        (
            "status >= OK",
            "filter: operator '>=' does not apply to enum field \"status\" at column 1; "
            "use = or !=",
        ),
        (
            "status = DONE",
            'filter: field "status" expects one of OK, INVALID_ARGUMENT, got "DONE" at column 10',
        ),
    ],
)
def test_compile_errors_name_field_and_expected_kind(text: str, message: str) -> None:
    expr = parse_filter(text)
    assert expr is not None
    with pytest.raises(FilterError) as caught:
        compile_filter(expr, resolve, search)
    assert str(caught.value) == message


def test_free_text_without_a_search_function_is_refused() -> None:
    expr = parse_filter("model = x pro")
    assert expr is not None
    with pytest.raises(FilterError) as caught:
        compile_filter(expr, resolve)
    assert str(caught.value) == "filter: free-text search is not supported here at column 11"


def test_a_resolver_error_that_names_its_column_is_kept() -> None:
    def picky(name: str) -> FilterField:
        raise FilterError("no fields today", 99)

    expr = parse_filter("a = 1")
    assert expr is not None
    with pytest.raises(FilterError, match="no fields today at column 99"):
        compile_filter(expr, picky)


def test_each_field_is_resolved_once_per_compile() -> None:
    seen: list[str] = []

    def counting(name: str) -> FilterField:
        seen.append(name)
        return resolve(name)

    expr = parse_filter("model = a OR model = b OR labels.team:* labels.team != c")
    assert expr is not None
    compile_filter(expr, counting)
    assert seen == ["model", "labels.team"]


def test_not_null_columns_compile_without_null_checks() -> None:
    expr = parse_filter("model != x")
    assert expr is not None
    sql = str(compile_filter(expr, resolve))
    assert "IS NULL" not in sql
    expr = parse_filter("labels.team != x")
    assert expr is not None
    assert "IS NULL" in str(compile_filter(expr, resolve))


def test_timezone_aware_columns_get_aware_timestamps() -> None:
    aware = Table("aware", MetaData(), Column("at", DateTime(timezone=True)))
    expr = parse_filter('at > "2025-01-02T03:04:05+02:00"')
    assert expr is not None
    condition = compile_filter(expr, lambda name: FilterField(aware.c.at, "timestamp"))
    bound = condition.compile().params
    assert list(bound.values()) == [datetime(2025, 1, 2, 1, 4, 5, tzinfo=UTC)]


# --- random input never breaks out of FilterError -------------------------------------------

GRAMMAR_PIECES = [
    "a",
    "model",
    "labels.team",
    "labels.cost-center",
    "usage.total_tokens",
    "create_time",
    "streamed",
    "status",
    "latency",
    "unknown.field",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    ":",
    "*",
    "AND",
    "OR",
    "NOT",
    "-",
    "(",
    ")",
    '"x"',
    '"2025-01-02T03:04:05Z"',
    "'y'",
    "42",
    "-1",
    "1e999",
    "2.5",
    "1.5s",
    "true",
    "OK",
    "gemini-2.5-pro",
    '"\\u00e9"',
    '"\\q"',
    '"',
    "\\",
    "99999999999999999999",
]


def check_random(text: str) -> None:
    try:
        expr = parse_filter(text)
        if expr is None:
            return
        condition = compile_filter(expr, resolve, search)
        with database().connect() as conn:
            conn.execute(select(calls.c.id).where(condition)).all()
    except FilterError as exc:
        message = str(exc)
        assert message.startswith("filter: ")
        assert len(message.splitlines()) == 1
        assert "Error" not in message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_only_ever_raises_filter_error(text: str) -> None:
    check_random(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(GRAMMAR_PIECES), max_size=25), st.sampled_from(["", " "]))
def test_random_token_soup_only_ever_raises_filter_error(pieces: list[str], glue: str) -> None:
    check_random(glue.join(pieces))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet='()" -NOTab=:*\\', max_size=300))
def test_random_nesting_only_ever_raises_filter_error(text: str) -> None:
    check_random(text)
