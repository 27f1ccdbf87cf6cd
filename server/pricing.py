"""What Gemini calls cost, from a price table kept as data.

Prices change, so they live in `data/prices.toml` (dated, with its source), never in code,
and the store keeps token counts rather than dollars: cost is computed when usage is
queried, so a corrected table re-prices all history. Every term of the bill is a token
count times a rate, so the same arithmetic prices one call or the sums over a million.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

LONG_PROMPT_TOKENS = 200_000
"""Prompt size above which a tiered model (e.g. Gemini 2.5 Pro) bills its long-prompt rates.

The tier is chosen per call by that call's promptTokenCount, and applies to input, output
and cached input alike; the store records per call whether the prompt exceeded this.
"""

TOKENS_PER_UNIT = 1_000_000
"""Rates in the table are per million tokens, as Google publishes them."""

_PACKAGE = "gemini_gateway.server"
_SHIPPED = ("data", "prices.toml")

_TOP_KEYS = {
    "read_on",
    "source",
    "source_last_updated",
    "checked_against",
    "currency",
    "batch_discount",
    "default",
    "models",
}
_RATE_KEYS = ("input", "output", "cached_input", "thinking")
_REQUIRED_RATE_KEYS = ("input", "output", "cached_input")
_ROW_KEYS = {*_RATE_KEYS, "long_prompt"}


class PriceTableError(ValueError):
    """A price table file that cannot be used; the message names the file and the problem."""


_Fail = Callable[[str], PriceTableError]


@dataclass(frozen=True)
class Rates:
    """USD per 1,000,000 tokens for one model in one prompt-size tier."""

    input: float
    output: float
    cached_input: float
    thinking: float


@dataclass(frozen=True)
class TokenSums:
    """Token counts of one call or summed over many, as usageMetadata reports them.

    `prompt` includes the `cached` tokens (promptTokenCount counts them); `tool_use` is
    toolUsePromptTokenCount, reported apart from the prompt.
    """

    prompt: int = 0
    candidates: int = 0
    cached: int = 0
    thoughts: int = 0
    tool_use: int = 0


@dataclass(frozen=True)
class _Row:
    key: str
    short: Rates
    long: Rates


class PriceTable:
    """The loaded price table: rates per model, the Batch API discount and provenance.

    Lookup order for a model name: the exact id, then the longest prefix pattern (a key
    ending in `*`) that matches it, then the `default` row. `models/x` and Vertex-style
    `.../models/x` names are looked up as `x`.
    """

    def __init__(
        self,
        *,
        read_on: date,
        source: str,
        currency: str,
        batch_discount: float,
        default: _Row,
        exact: dict[str, _Row],
        prefixes: list[_Row],
        source_last_updated: date | None = None,
        checked_against: tuple[str, ...] = (),
    ) -> None:
        self.read_on = read_on
        self.source = source
        self.currency = currency
        self.batch_discount = batch_discount
        self.source_last_updated = source_last_updated
        self.checked_against = checked_against
        self._default = default
        self._exact = exact
        # Longest first, so the first match is the most specific pattern.
        self._prefixes = sorted(prefixes, key=lambda row: len(row.key), reverse=True)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Read the shipped table, or `path` instead of it (an override replaces it whole).

        A whole-table override keeps one file the single truth for any deployment, rather
        than a merge whose result no file shows. Raises PriceTableError on any problem.
        """
        if path is None:
            resource = resources.files(_PACKAGE).joinpath(*_SHIPPED)
            name = f"{_PACKAGE}:{'/'.join(_SHIPPED)}"
            try:
                raw = resource.read_bytes()
            except OSError as exc:
                raise PriceTableError(f"{name}: cannot read: {exc.strerror or exc}") from None
        else:
            name = str(path)
            try:
                raw = Path(path).read_bytes()
            except OSError as exc:
                raise PriceTableError(f"{name}: cannot read: {exc.strerror or exc}") from None
        return cls.from_toml(raw, name)

    @classmethod
    def from_toml(cls, raw: bytes | str, name: str = "<prices>") -> PriceTable:
        """Parse and validate table text; `name` is used in error messages."""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise PriceTableError(f"{name}: not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PriceTableError(f"{name}: not valid TOML: {exc}") from None
        return _parse_table(data, name)

    def rates_for(self, model: str, long_prompt: bool) -> Rates:
        """The rates billed for a call to `model` (long_prompt: prompt > LONG_PROMPT_TOKENS)."""
        row = self._row_for(model)
        return row.long if long_prompt else row.short

    def matched_row(self, model: str) -> str:
        """The table key that prices `model` ("default" when none does), for display."""
        return self._row_for(model).key

    def cost(self, model: str, long_prompt: bool, tokens: TokenSums, batch: bool = False) -> float:
        """USD for `tokens` spent on `model` in the given prompt tier.

        Fresh input (prompt minus cached) and tool-use prompt tokens bill at the input
        rate, cached tokens at the cached-input rate, candidates at output and thoughts at
        the thinking rate; Batch API calls get `batch_discount` off the whole bill. Sums
        work because the bill is linear in every count; the fresh count is floored at zero
        so a malformed record (cached > prompt) cannot make a bill negative.
        """
        rates = self.rates_for(model, long_prompt)
        fresh = max(tokens.prompt - tokens.cached, 0)
        micro_usd = (
            fresh * rates.input
            + tokens.tool_use * rates.input
            + tokens.cached * rates.cached_input
            + tokens.candidates * rates.output
            + tokens.thoughts * rates.thinking
        )
        usd = micro_usd / TOKENS_PER_UNIT
        if batch:
            usd *= 1.0 - self.batch_discount
        return usd

    def _row_for(self, model: str) -> _Row:
        name = model_id(model)
        row = self._exact.get(name)
        if row is not None:
            return row
        for row in self._prefixes:
            if name.startswith(row.key[:-1]):
                return row
        return self._default


def model_id(model: str) -> str:
    """`gemini-2.5-pro` from `models/gemini-2.5-pro` or `publishers/google/models/...`.

    Callers record whatever name the client sent; pricing must not depend on its spelling.
    `tunedModels/...` is left alone (it is not under `models/`), so it gets the default row.
    """
    name = model.strip()
    cut = name.rfind("models/")
    if cut == 0 or (cut > 0 and name[cut - 1] == "/"):
        return name[cut + len("models/") :]
    return name


def _parse_table(data: dict[str, Any], name: str) -> PriceTable:
    def fail(problem: str) -> PriceTableError:
        return PriceTableError(f"{name}: {problem}")

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} at the top level")

    read_on = data.get("read_on")
    if read_on is None:
        raise fail("missing read_on (the date the figures were read, e.g. read_on = 2026-11-25)")
    if not isinstance(read_on, date):
        raise fail("read_on must be a TOML date such as 2026-11-25, not a string")
    last_updated = data.get("source_last_updated")
    if last_updated is not None and not isinstance(last_updated, date):
        raise fail("source_last_updated must be a TOML date such as 2026-11-25")

    source = data.get("source")
    if not isinstance(source, str) or not source.strip():
        raise fail("missing source (the URL of the price page)")
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not currency.strip():
        raise fail('currency must be a non-empty string such as "USD"')
    checked = data.get("checked_against", [])
    if not isinstance(checked, list) or not all(isinstance(url, str) for url in checked):
        raise fail("checked_against must be a list of URLs")

    discount = data.get("batch_discount")
    if discount is None:
        raise fail("missing batch_discount (a fraction, e.g. 0.5 for 50% off)")
    discount = _number(discount, "batch_discount", fail)
    if discount >= 1:
        raise fail(f"batch_discount must be a fraction below 1, got {discount}")

    default_raw = data.get("default")
    if not isinstance(default_raw, dict):
        raise fail("missing [default] row (rates for models the table does not name)")
    default = _parse_row("default", default_raw, "[default]", fail)

    models_raw = data.get("models", {})
    if not isinstance(models_raw, dict):
        raise fail('models must be a table of rows such as [models."gemini-2.5-pro"]')
    exact: dict[str, _Row] = {}
    prefixes: list[_Row] = []
    for key, row_raw in models_raw.items():
        where = f'[models."{key}"]'
        _check_model_key(key, where, fail)
        if not isinstance(row_raw, dict):
            raise fail(f"{where} must be a table of rates")
        row = _parse_row(key, row_raw, where, fail)
        if key.endswith("*"):
            prefixes.append(row)
        else:
            exact[key] = row

    return PriceTable(
        read_on=read_on,
        source=source.strip(),
        currency=currency.strip(),
        batch_discount=discount,
        default=default,
        exact=exact,
        prefixes=prefixes,
        source_last_updated=last_updated,
        checked_against=tuple(checked),
    )


def _check_model_key(key: str, where: str, fail: _Fail) -> None:
    stem = key.removesuffix("*")
    if not stem.strip():
        raise fail(f"{where}: empty model id")
    if "*" in stem:
        raise fail(f"{where}: '*' may only end a key (a prefix pattern)")
    if "/" in key:
        raise fail(f"{where}: use the bare model id, without 'models/' or any '/'")
    if stem != stem.strip():
        raise fail(f"{where}: model id has surrounding spaces")


def _parse_row(key: str, raw: dict[str, Any], where: str, fail: _Fail) -> _Row:
    unknown = sorted(set(raw) - _ROW_KEYS)
    if unknown:
        raise fail(f"{where}: unknown key {unknown[0]!r}")
    for rate in _REQUIRED_RATE_KEYS:
        if rate not in raw:
            raise fail(f"{where}: missing {rate}")
    values = {
        rate: _number(raw[rate], f"{where} {rate}", fail) for rate in raw if rate in _RATE_KEYS
    }
    short = Rates(
        input=values["input"],
        output=values["output"],
        cached_input=values["cached_input"],
        thinking=values.get("thinking", values["output"]),
    )

    long_raw = raw.get("long_prompt")
    if long_raw is None:
        return _Row(key, short, short)
    if not isinstance(long_raw, dict):
        raise fail(f"{where}: long_prompt must be a table of rates")
    long_where = f"{where[:-1]}.long_prompt]"
    unknown = sorted(set(long_raw) - set(_RATE_KEYS))
    if unknown:
        raise fail(f"{long_where}: unknown key {unknown[0]!r}")
    long_values = {rate: _number(v, f"{long_where} {rate}", fail) for rate, v in long_raw.items()}
    long_output = long_values.get("output", short.output)
    if "thinking" in long_values:
        long_thinking = long_values["thinking"]
    elif "thinking" in values:
        long_thinking = short.thinking
    else:
        long_thinking = long_output
    long = Rates(
        input=long_values.get("input", short.input),
        output=long_output,
        cached_input=long_values.get("cached_input", short.cached_input),
        thinking=long_thinking,
    )
    return _Row(key, short, long)


def _number(value: Any, what: str, fail: _Fail) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise fail(f"{what} must be a finite number, got {value!r}")
    if number < 0:
        raise fail(f"{what} must not be negative, got {value!r}")
    return number
