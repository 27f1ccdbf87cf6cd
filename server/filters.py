"""The AIP-160 filter subset shared by usage queries and request-log listing.

A filter is parsed once into an immutable tree and compiled to a SQLAlchemy Core
condition against columns a caller-supplied resolver picks, so the grammar lives in one
place and every listing speaks the same language (https://google.aip.dev/160).

Supported: comparisons `field OP value` with OP one of = != < <= > >= and `:` (has;
`labels.team:*` means the label is present), AND, OR (binding tighter than AND, as
AIP-160 specifies), NOT and a leading `-`, parentheses, implicit AND between adjacent
terms, and bare words or quoted strings standing alone as free-text search terms. Values
are double- or single-quoted strings with backslash escapes, bare words, integers, floats,
true/false, RFC 3339 timestamps (quoted, since `:` is an operator) and durations such as
`1.5s`.

The parser is a hand-written recursive descent with a hard cap on input length and
nesting, so hostile input ends in FilterError, never RecursionError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, not_, or_
from sqlalchemy.sql.elements import ColumnElement

MAX_FILTER_LENGTH = 4096
"""Longest filter accepted, in characters; far beyond any hand-written filter."""

MAX_DEPTH = 32
"""Deepest nesting of parentheses and negations accepted."""

Operator = Literal["=", "!=", "<", "<=", ">", ">=", ":"]
ValueKind = Literal["string", "word", "int", "float", "bool", "timestamp", "duration"]
FieldKind = Literal["string", "number", "timestamp", "bool", "enum"]

KEYWORDS = frozenset({"AND", "OR", "NOT"})

# Characters of a bare word. `:` is an operator, so timestamps must be quoted.
_WORD_EXTRA = frozenset("_-.*/+@")
# Characters of one segment of a field path (`labels.team`).
_FIELD_EXTRA = frozenset("_-")
_COMPARATORS: tuple[Operator, ...] = ("<=", ">=", "!=", "<", ">", "=", ":")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "*": "*", "n": "\n", "t": "\t", "r": "\r"}

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?")
_DURATION = re.compile(r"(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))s")
_TIMESTAMP = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(\.[0-9]+)?([Zz]|[-+][0-9]{2}:[0-9]{2})"
)
_INT64 = 2**63


class FilterError(ValueError):
    """A filter that cannot be parsed or compiled.

    The message is one line: `filter: <problem> at column <n>[; <hint>]`, naming the
    position and what was expected, fit to return to the caller as INVALID_ARGUMENT.
    """

    def __init__(self, problem: str, column: int | None = None, hint: str | None = None) -> None:
        self.problem = problem.removeprefix("filter: ")
        self.column = column
        self.hint = hint
        message = f"filter: {self.problem}"
        if column is not None:
            message += f" at column {column}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


# --- the tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A literal as written, with the reading its spelling suggests.

    `text` is the unescaped content of a quoted string or the bare word as written; the
    compiler converts it by the kind of the field it is compared with, so `labels.team =
    123` still compares the string "123".
    """

    text: str
    kind: ValueKind
    value: str | int | float | bool | datetime | timedelta
    quoted: bool
    column: int


@dataclass(frozen=True)
class Comparison:
    """`field OP value`."""

    field: str
    op: Operator
    value: Value
    column: int


@dataclass(frozen=True)
class Text:
    """A bare word or quoted string standing alone: a free-text search term."""

    value: Value
    column: int


@dataclass(frozen=True)
class Not:
    """`NOT term` or `-term`."""

    operand: Expr
    column: int


@dataclass(frozen=True)
class And:
    """Terms joined by AND or by adjacency (at least two)."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    """Terms joined by OR (at least two)."""

    operands: tuple[Expr, ...]


Expr = Comparison | Text | Not | And | Or


def parse_filter(text: str) -> Expr | None:
    """Parse `text` into a tree; None for an empty or all-whitespace filter (no condition)."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"longer than {MAX_FILTER_LENGTH} characters ({len(text)})")
    for index, char in enumerate(text):
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise FilterError("not valid Unicode text (a lone surrogate)", index + 1)
    if not text.strip():
        return None
    return _Parser(text).parse()


class _Parser:
    """Recursive descent over the text itself, one method per grammar rule.

    Lexing happens on demand because `-` means negation at the start of a term but is an
    ordinary character inside words such as `gemini-2.5-pro` and `-5`.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- characters --

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def char(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def column(self) -> int:
        return self.pos + 1

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword_here(self) -> str | None:
        """The keyword starting at the cursor, if a whole word is one."""
        end = self.pos
        while end < len(self.text) and _is_word_char(self.text[end]):
            end += 1
        word = self.text[self.pos : end]
        return word if word in KEYWORDS else None

    def take_keyword(self, keyword: str) -> bool:
        if self.keyword_here() == keyword:
            self.pos += len(keyword)
            return True
        return False

    def unexpected(self) -> FilterError:
        if self.at_end():
            return FilterError("unexpected end of filter", self.column())
        return FilterError(f"unexpected {_show_char(self.char())}", self.column())

    # -- grammar --

    def parse(self) -> Expr:
        self.skip_space()
        expr = self.expression(0)
        self.skip_space()
        if not self.at_end():
            if self.char() == ")":
                raise FilterError("unexpected ')' with no '(' to close", self.column())
            raise self.unexpected()
        return expr

    def expression(self, depth: int) -> Expr:
        parts = [self.sequence(depth)]
        while True:
            mark = self.pos
            self.skip_space()
            if not self.take_keyword("AND"):
                self.pos = mark
                break
            self.expect_term_after("'AND'")
            parts.append(self.sequence(depth))
        return _join(And, parts)

    def sequence(self, depth: int) -> Expr:
        parts = [self.factor(depth)]
        while True:
            mark = self.pos
            self.skip_space()
            if self.at_end() or self.char() == ")" or self.keyword_here() in ("AND", "OR"):
                self.pos = mark
                break
            parts.append(self.factor(depth))
        return _join(And, parts)

    def factor(self, depth: int) -> Expr:
        parts = [self.term(depth)]
        while True:
            mark = self.pos
            self.skip_space()
            if not self.take_keyword("OR"):
                self.pos = mark
                break
            self.expect_term_after("'OR'")
            parts.append(self.term(depth))
        return _join(Or, parts)

    def expect_term_after(self, what: str) -> None:
        self.skip_space()
        if self.at_end() or self.char() == ")" or self.keyword_here() in ("AND", "OR"):
            raise FilterError(f"expected a term after {what}", self.column())

    def term(self, depth: int) -> Expr:
        start = self.column()
        if self.take_keyword("NOT"):
            self.check_depth(depth + 1, start)
            self.expect_term_after("'NOT'")
            return Not(self.term(depth + 1), start)
        if self.char() == "-":
            self.pos += 1
            if self.at_end() or self.char().isspace() or self.char() == ")":
                raise FilterError("expected a term right after '-'", self.column())
            self.check_depth(depth + 1, start)
            return Not(self.term(depth + 1), start)
        return self.simple(depth)

    def check_depth(self, depth: int, column: int) -> None:
        if depth > MAX_DEPTH:
            raise FilterError(f"nested more than {MAX_DEPTH} levels deep", column)

    def simple(self, depth: int) -> Expr:
        if self.char() != "(":
            return self.restriction()
        opened = self.column()
        self.check_depth(depth + 1, opened)
        self.pos += 1
        self.expect_term_after("'('")
        expr = self.expression(depth + 1)
        self.skip_space()
        if self.char() != ")":
            raise FilterError(
                f"'(' at column {opened} is never closed; expected ')'", self.column()
            )
        self.pos += 1
        return expr

    def restriction(self) -> Expr:
        start = self.column()
        char = self.char()
        if char in ("'", '"'):
            value = self.string()
            mark = self.pos
            self.skip_space()
            op = self.comparator()
            if op is not None:
                raise FilterError(
                    f"expected a field name before '{op}', found a quoted string", start
                )
            self.pos = mark
            return Text(value, start)
        if not _is_word_char(char):
            raise self.unexpected()
        word = self.word()
        if word in KEYWORDS:
            raise FilterError(f"expected a term, found '{word}'", start)
        mark = self.pos
        self.skip_space()
        op = self.comparator()
        if op is None:
            self.pos = mark
            return Text(_bare_value(word, start), start)
        _check_field_name(word, start)
        self.skip_space()
        return Comparison(word, op, self.value(op), start)

    def comparator(self) -> Operator | None:
        for op in _COMPARATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return op
        return None

    def value(self, op: Operator) -> Value:
        start = self.column()
        char = self.char()
        if char in ("'", '"'):
            return self.string()
        if not _is_word_char(char):
            if self.at_end():
                raise FilterError(f"expected a value after '{op}'", start)
            raise FilterError(f"expected a value after '{op}', found {_show_char(char)}", start)
        word = self.word()
        if word in KEYWORDS:
            raise FilterError(
                f"expected a value after '{op}', found '{word}'", start, "quote it to use the word"
            )
        return _bare_value(word, start)

    def word(self) -> str:
        begin = self.pos
        while self.pos < len(self.text) and _is_word_char(self.text[self.pos]):
            self.pos += 1
        return self.text[begin : self.pos]

    def string(self) -> Value:
        quote = self.char()
        start = self.column()
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                text = "".join(out)
                stamp = _timestamp(text)
                if stamp is not None:
                    return Value(text, "timestamp", stamp, True, start)
                return Value(text, "string", text, True, start)
            if char != "\\":
                out.append(char)
                self.pos += 1
                continue
            escape_column = self.column()
            escape = self.text[self.pos + 1 : self.pos + 2]
            if escape in _ESCAPES:
                out.append(_ESCAPES[escape])
                self.pos += 2
            elif escape == "u":
                digits = self.text[self.pos + 2 : self.pos + 6]
                if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                    raise FilterError("expected four hex digits after '\\u'", escape_column)
                code = int(digits, 16)
                if 0xD800 <= code <= 0xDFFF:
                    raise FilterError("'\\u' escape names a lone surrogate", escape_column)
                out.append(chr(code))
                self.pos += 6
            elif escape == "":
                break
            else:
                raise FilterError(f"unknown escape '\\{_printable(escape)}'", escape_column)
        raise FilterError("unterminated string", start, f"add the closing {quote}")


def _join(node: type[And] | type[Or], parts: list[Expr]) -> Expr:
    if len(parts) == 1:
        return parts[0]
    flat: list[Expr] = []
    for part in parts:
        flat.extend(part.operands if isinstance(part, node) else (part,))
    return node(tuple(flat))


def _is_word_char(char: str) -> bool:
    return bool(char) and (char.isalnum() or char in _WORD_EXTRA)


def _check_field_name(word: str, column: int) -> None:
    segments = word.split(".")
    if any(not segment for segment in segments) or not all(
        char.isalnum() or char in _FIELD_EXTRA for segment in segments for char in segment
    ):
        raise FilterError(
            f"invalid field name {_show(word)}",
            column,
            "fields are names joined by dots, such as labels.team",
        )


def _bare_value(word: str, column: int) -> Value:
    if _INT.fullmatch(word):
        return Value(word, "int", int(word), False, column)
    if _FLOAT.fullmatch(word):
        return Value(word, "float", float(word), False, column)
    match = _DURATION.fullmatch(word)
    if match:
        try:
            span = timedelta(seconds=float(match.group(1)))
        except OverflowError:
            raise FilterError(f"duration {_show(word)} is out of range", column) from None
        return Value(word, "duration", span, False, column)
    if word.lower() in ("true", "false"):
        return Value(word, "bool", word.lower() == "true", False, column)
    return Value(word, "word", word, False, column)


def _timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime, or None if `text` is not one."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    day, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # "." and at most microseconds
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        stamp = datetime.fromisoformat(f"{day}T{clock}{fraction}{offset}")
        return stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _printable(text: str) -> str:
    """`text` with backslashes, double quotes and non-printing characters escaped."""
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return "".join(out)


def _show(text: str, limit: int = 40) -> str:
    """`text` quoted for an error message: one line, bounded, control characters escaped."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return f'"{_printable(cut)}"'


def _show_char(char: str) -> str:
    return f"'{char}'" if char.isprintable() and char not in "'\\" else f"U+{ord(char):04X}"


# --- compiling to SQL ----------------------------------------------------------------------


@dataclass(frozen=True)
class FilterField:
    """What a filter field name stands for: a SQL expression and how to read literals.

    `values` optionally lists an enum field's accepted names, so a typo is an error rather
    than a filter that silently matches nothing.
    """

    column: ColumnElement[Any]
    kind: FieldKind
    values: tuple[str, ...] = ()


Resolver = Callable[[str], FilterField]
TextSearch = Callable[[str], ColumnElement[bool]]


def compile_filter(
    expr: Expr, resolve: Resolver, text_search: TextSearch | None = None
) -> ColumnElement[bool]:
    """A WHERE condition for `expr`.

    `resolve` maps a field path to its FilterField and raises FilterError (listing the
    allowed fields) for an unknown one; `text_search` turns a free-text term into a
    condition, or is None where free text means nothing. Every comparison is two-valued:
    a NULL field never matches `=`, `<` and so on, and always matches `!=`, so `NOT a = x`
    and `a != x` agree and calls without a label are counted by `labels.team != "x"`.
    """
    return _Compiler(resolve, text_search).compile(expr)


def field_resolver(
    fields: Mapping[str, FilterField],
    maps: Mapping[str, Callable[[str], FilterField]] | None = None,
) -> Resolver:
    """A resolver over fixed `fields` plus map-like prefixes such as `labels.<key>`.

    `maps["labels"]("team")` is called for `labels.team`. Unknown names raise a
    FilterError whose hint lists what is allowed.
    """
    maps = dict(maps or {})
    allowed = ", ".join([*sorted(fields), *(f"{prefix}.<key>" for prefix in sorted(maps))])

    def resolve(name: str) -> FilterField:
        field = fields.get(name)
        if field is not None:
            return field
        head, dot, key = name.partition(".")
        if dot and key and head in maps:
            return maps[head](key)
        raise FilterError(f"unknown field {_show(name)}", hint=f"allowed fields: {allowed}")

    return resolve


class _Compiler:
    def __init__(self, resolve: Resolver, text_search: TextSearch | None) -> None:
        self.resolve = resolve
        self.text_search = text_search
        self.fields: dict[str, FilterField] = {}

    def compile(self, expr: Expr) -> ColumnElement[bool]:
        match expr:
            case And(operands):
                return and_(*(self.compile(operand) for operand in operands))
            case Or(operands):
                return or_(*(self.compile(operand) for operand in operands))
            case Not(operand):
                return not_(self.compile(operand))
            case Text(value, column):
                if self.text_search is None:
                    raise FilterError("free-text search is not supported here", column)
                return self.text_search(value.text)
            case Comparison():
                return self.comparison(expr)
        raise TypeError(f"not a filter expression: {expr!r}")

    def field(self, name: str, column: int) -> FilterField:
        field = self.fields.get(name)
        if field is None:
            try:
                field = self.resolve(name)
            except FilterError as exc:
                if exc.column is not None:
                    raise
                raise FilterError(exc.problem, column, exc.hint) from None
            self.fields[name] = field
        return field

    def comparison(self, node: Comparison) -> ColumnElement[bool]:
        field = self.field(node.field, node.column)
        column = field.column
        value = node.value
        if node.op == ":" and not value.quoted and value.text == "*":
            return column.is_not(None)
        op = "=" if node.op == ":" else node.op
        if op not in ("=", "!=") and field.kind in ("bool", "enum"):
            raise FilterError(
                f"operator '{op}' does not apply to {field.kind} field {_show(node.field)}",
                node.column,
                "use = or !=",
            )
        literal = _literal_for(field, node)
        if op == "!=":
            condition = column != literal
            return or_(column.is_(None), condition) if _nullable(column) else condition
        if op == "=":
            condition = column == literal
        elif op == "<":
            condition = column < literal
        elif op == "<=":
            condition = column <= literal
        elif op == ">":
            condition = column > literal
        else:
            condition = column >= literal
        return and_(column.is_not(None), condition) if _nullable(column) else condition


def _nullable(column: ColumnElement[Any]) -> bool:
    """False only for a table column declared NOT NULL; expressions may always be NULL."""
    return getattr(column, "nullable", True) is not False


def _literal_for(field: FilterField, node: Comparison) -> Any:
    value = node.value
    name = _show(node.field)

    def wrong(expected: str) -> FilterError:
        return FilterError(
            f"field {name} expects {expected}, got {_show(value.text)}", value.column
        )

    match field.kind:
        case "string":
            return value.text
        case "enum":
            if field.values and value.text not in field.values:
                raise wrong("one of " + ", ".join(field.values))
            return value.text
        case "bool":
            if value.text.lower() in ("true", "false"):
                return value.text.lower() == "true"
            raise wrong("true or false")
        case "number":
            reading = value if not value.quoted else _bare_value(value.text, value.column)
            number = reading.value
            if reading.kind == "int" and isinstance(number, int):
                if abs(number) >= _INT64:
                    raise wrong("a number within 64-bit range")
                return number
            if reading.kind == "float" and isinstance(number, float) and math.isfinite(number):
                return number
            if reading.kind == "duration" and isinstance(number, timedelta):
                return number.total_seconds()
            raise wrong("a number")
        case "timestamp":
            if value.kind != "timestamp" or not isinstance(value.value, datetime):
                raise wrong('an RFC 3339 timestamp such as "2026-01-02T03:04:05Z"')
            stamp = value.value
            aware = bool(getattr(field.column.type, "timezone", False))
            return stamp if aware else stamp.replace(tzinfo=None)
    raise FilterError(f"field {name} has an unsupported kind {field.kind!r}", node.column)
