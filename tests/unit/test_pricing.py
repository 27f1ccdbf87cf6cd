"""The price table: the shipped file, model lookup, tiers, arithmetic and bad files."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from gemini_gateway.server.pricing import (
    LONG_PROMPT_TOKENS,
    PriceTable,
    PriceTableError,
    Rates,
    TokenSums,
    model_id,
)

EMULATOR_MODELS = (
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-embedding-001",
    "text-embedding-004",
)

# A small table with round figures, so expected costs can be worked out by hand.
SMALL = """
read_on = 2026-11-25
source = "https://example.test/prices"
currency = "USD"
batch_discount = 0.5

[default]
input = 1.0
output = 2.0
cached_input = 0.5

[models."fam-pro*"]
input = 1.0
output = 10.0
cached_input = 0.1

[models."fam-pro*".long_prompt]
input = 2.0
output = 15.0
cached_input = 0.2

[models."fam-flash*"]
input = 0.3
output = 2.5
cached_input = 0.03

[models."fam-flash-lite*"]
input = 0.1
output = 0.4
cached_input = 0.01

[models."fam-flash-special"]
input = 7.0
output = 7.0
cached_input = 7.0
thinking = 3.0
"""


@pytest.fixture(scope="module")
def shipped() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> PriceTable:
    path = tmp_path_factory.mktemp("prices") / "small.toml"
    path.write_text(SMALL)
    return PriceTable.load(path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    return path


# --- the shipped table -------------------------------------------------------------------


def test_shipped_table_loads_with_provenance(shipped: PriceTable) -> None:
    assert shipped.read_on == date(2026, 11, 25)
    assert shipped.source == "https://ai.google.dev/gemini-api/docs/pricing"
    assert shipped.currency == "USD"
    assert shipped.batch_discount == 0.5
    assert shipped.checked_against


@pytest.mark.parametrize("model", EMULATOR_MODELS)
def test_every_emulator_model_has_its_own_row(shipped: PriceTable, model: str) -> None:
    assert shipped.matched_row(model) != "default"


def test_emulator_catalogue_models_are_all_priced(shipped: PriceTable) -> None:
    catalog = Path(__file__).resolve().parents[2] / "emulator" / "catalog.py"
    ids = set(re.findall(r'^\s+"((?:gemini|text)-[a-z0-9.-]+)",$', catalog.read_text(), re.M))
    assert ids, "the emulator catalogue lists no models any more; update this test"
    for model in ids:
        assert shipped.matched_row(model) != "default", model


def test_shipped_figures_for_the_main_models(shipped: PriceTable) -> None:
    assert shipped.rates_for("gemini-2.5-pro", False) == Rates(1.25, 10.0, 0.125, 10.0)
    assert shipped.rates_for("gemini-2.5-pro", True) == Rates(2.5, 15.0, 0.25, 15.0)
    assert shipped.rates_for("gemini-2.5-flash", False) == Rates(0.3, 2.5, 0.03, 2.5)
    assert shipped.rates_for("gemini-2.5-flash-lite", False) == Rates(0.1, 0.4, 0.01, 0.4)
    assert shipped.rates_for("gemini-embedding-001", False).input == 0.15


def test_shipped_untiered_models_ignore_the_long_prompt_flag(shipped: PriceTable) -> None:
    for model in ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash"):
        assert shipped.rates_for(model, True) == shipped.rates_for(model, False)


def test_shipped_variants_go_to_their_family(shipped: PriceTable) -> None:
    assert shipped.matched_row("gemini-2.5-flash-preview-09-2025") == "gemini-2.5-flash*"
    assert shipped.matched_row("gemini-2.5-flash-lite-preview-09-2025") == (
        "gemini-2.5-flash-lite*"
    )
    assert shipped.matched_row("gemini-2.0-flash-001") == "gemini-2.0-flash*"
    assert shipped.matched_row("gemini-2.0-flash-lite-001") == "gemini-2.0-flash-lite*"
    assert shipped.matched_row("tunedModels/my-model-abc") == "default"


def test_shipped_cached_rate_is_below_input_for_tokens_that_can_be_cached(
    shipped: PriceTable,
) -> None:
    for model in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"):
        for long_prompt in (False, True):
            rates = shipped.rates_for(model, long_prompt)
            assert rates.cached_input < rates.input


# --- lookup ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemini-2.5-pro", "gemini-2.5-pro"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("  models/gemini-2.5-pro ", "gemini-2.5-pro"),
        ("publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("projects/p/locations/us/publishers/google/models/x", "x"),
        ("tunedModels/abc", "tunedModels/abc"),
        ("notmodels/x", "notmodels/x"),
    ],
)
def test_model_id_normalisation(name: str, expected: str) -> None:
    assert model_id(name) == expected


def test_exact_row_beats_any_pattern(small: PriceTable) -> None:
    assert small.matched_row("fam-flash-special") == "fam-flash-special"
    assert small.rates_for("models/fam-flash-special", False).input == 7.0


def test_longest_prefix_wins(small: PriceTable) -> None:
    assert small.matched_row("fam-flash") == "fam-flash*"
    assert small.matched_row("fam-flash-001") == "fam-flash*"
    assert small.matched_row("fam-flash-lite") == "fam-flash-lite*"
    assert small.matched_row("fam-flash-lite-preview-01") == "fam-flash-lite*"
    # An exact key is not a pattern: it does not price longer names.
    assert small.matched_row("fam-flash-special-2") == "fam-flash*"


def test_unknown_models_get_the_default_row(small: PriceTable) -> None:
    assert small.matched_row("other-model") == "default"
    assert small.matched_row("fam") == "default"
    assert small.rates_for("other-model", True) == Rates(1.0, 2.0, 0.5, 2.0)


def test_thinking_defaults_to_output_unless_stated(small: PriceTable) -> None:
    assert small.rates_for("fam-pro", False).thinking == 10.0
    assert small.rates_for("fam-pro", True).thinking == 15.0
    assert small.rates_for("fam-flash-special", False).thinking == 3.0


# --- tiers and arithmetic ----------------------------------------------------------------


def test_tier_switch_changes_input_output_and_cached_alike(small: PriceTable) -> None:
    assert small.rates_for("fam-pro-2", False) == Rates(1.0, 10.0, 0.1, 10.0)
    assert small.rates_for("fam-pro-2", True) == Rates(2.0, 15.0, 0.2, 15.0)


def test_long_prompt_constant() -> None:
    assert LONG_PROMPT_TOKENS == 200_000


def test_cost_of_one_call_by_hand(small: PriceTable) -> None:
    tokens = TokenSums(prompt=1_000_000, candidates=100_000, cached=400_000, thoughts=50_000)
    # fresh 600k * 1.0 + cached 400k * 0.1 + out 100k * 10 + thoughts 50k * 10
    # = 0.60 + 0.04 + 1.00 + 0.50
    assert small.cost("fam-pro", False, tokens) == pytest.approx(2.14, rel=1e-12)


def test_cost_in_the_long_tier_by_hand(small: PriceTable) -> None:
    tokens = TokenSums(prompt=300_000, candidates=10_000, cached=100_000, tool_use=20_000)
    # fresh 200k * 2.0 + tool 20k * 2.0 + cached 100k * 0.2 + out 10k * 15
    # = 0.40 + 0.04 + 0.02 + 0.15
    assert small.cost("fam-pro", True, tokens) == pytest.approx(0.61, rel=1e-12)


def test_cost_with_a_separate_thinking_rate(small: PriceTable) -> None:
    tokens = TokenSums(prompt=1_000, candidates=1_000, thoughts=1_000_000)
    # 1k * 7 + 1k * 7 + 1M * 3 = 0.007 + 0.007 + 3.0
    assert small.cost("fam-flash-special", False, tokens) == pytest.approx(3.014, rel=1e-12)


def test_cost_of_shipped_gemini_25_pro_by_hand(shipped: PriceTable) -> None:
    tokens = TokenSums(prompt=11_500, candidates=1_000, cached=10_000, thoughts=10_000)
    # fresh 1.5k * 1.25 + cached 10k * 0.125 + (1k + 10k) * 10
    # = 0.001875 + 0.00125 + 0.11
    assert shipped.cost("models/gemini-2.5-pro", False, tokens) == pytest.approx(
        0.113125, rel=1e-12
    )


def test_batch_discount_halves_the_bill(small: PriceTable) -> None:
    tokens = TokenSums(prompt=2_000_000, candidates=1_000_000)
    interactive = small.cost("fam-flash", False, tokens)
    assert interactive == pytest.approx(0.6 + 2.5, rel=1e-12)
    assert small.cost("fam-flash", False, tokens, batch=True) == pytest.approx(1.55, rel=1e-12)


def test_cost_is_linear_so_sums_price_like_calls(small: PriceTable) -> None:
    calls = [
        TokenSums(prompt=1200, candidates=300, cached=200, thoughts=50, tool_use=10),
        TokenSums(prompt=800, candidates=90, cached=0, thoughts=0, tool_use=0),
        TokenSums(prompt=50_000, candidates=7_000, cached=40_000, thoughts=900, tool_use=3),
    ]
    total = TokenSums(
        prompt=sum(c.prompt for c in calls),
        candidates=sum(c.candidates for c in calls),
        cached=sum(c.cached for c in calls),
        thoughts=sum(c.thoughts for c in calls),
        tool_use=sum(c.tool_use for c in calls),
    )
    each = sum(small.cost("fam-pro", False, c) for c in calls)
    assert small.cost("fam-pro", False, total) == pytest.approx(each, rel=1e-12)


def test_no_tokens_cost_nothing_and_bad_records_never_go_negative(small: PriceTable) -> None:
    assert small.cost("fam-pro", False, TokenSums()) == 0.0
    assert small.cost("fam-pro", False, TokenSums(prompt=10, cached=20)) >= 0.0


# --- malformed override files ------------------------------------------------------------


def replace_in_small(old: str, new: str) -> str:
    assert old in SMALL
    return SMALL.replace(old, new, 1)


BAD_TABLES = [
    (
        replace_in_small("[default]\ninput = 1.0\noutput = 2.0\ncached_input = 0.5\n", ""),
        "missing [default] row",
    ),
    (replace_in_small("input = 0.3", "input = -0.3"), "must not be negative"),
    (replace_in_small("input = 0.3", 'input = "0.3"'), "must be a number"),
    (replace_in_small("input = 0.3", "input = true"), "must be a number"),
    (replace_in_small("input = 0.3", "input = nan"), "must be a finite number"),
    (replace_in_small("input = 0.3", "inptu = 0.3"), "unknown key 'inptu'"),
    (replace_in_small('currency = "USD"', 'currency = "USD"\ncolour = 1'), "unknown key"),
    (replace_in_small("output = 15.0", "outptu = 15.0"), "unknown key 'outptu'"),
    (replace_in_small("cached_input = 0.01\n", ""), "missing cached_input"),
    (replace_in_small("read_on = 2026-11-25\n", ""), "missing read_on"),
    (replace_in_small("read_on = 2026-11-25", 'read_on = "2026-11-25"'), "TOML date"),
    (replace_in_small('source = "https://example.test/prices"\n', ""), "missing source"),
    (replace_in_small("batch_discount = 0.5\n", ""), "missing batch_discount"),
    (replace_in_small("batch_discount = 0.5", "batch_discount = 1.5"), "fraction below 1"),
    (replace_in_small('[models."fam-flash*"]', '[models."fam*-flash"]'), "may only end"),
    (replace_in_small('[models."fam-flash*"]', '[models."models/fam-flash"]'), "bare model"),
    (
        replace_in_small(
            "[models.",
            "[models.=",
        ),
        "not valid TOML",
    ),
]


@pytest.mark.parametrize(("text", "problem"), BAD_TABLES)
def test_malformed_override_gives_one_clear_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PriceTableError) as caught:
        PriceTable.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_missing_override_file_is_a_price_table_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PriceTableError, match=r"nope\.toml: cannot read"):
        PriceTable.load(missing)


def test_price_table_error_is_a_value_error() -> None:
    assert issubclass(PriceTableError, ValueError)


def test_override_replaces_the_whole_table(small: PriceTable) -> None:
    # The small table knows nothing of Gemini: the shipped rows are not merged in.
    assert small.matched_row("gemini-2.5-pro") == "default"
    assert small.source == "https://example.test/prices"


def test_long_prompt_keys_fall_back_to_the_short_rates(tmp_path: Path) -> None:
    text = SMALL + '\n[models."partial"]\ninput = 1.0\noutput = 4.0\ncached_input = 0.25\n'
    text += '[models."partial".long_prompt]\ninput = 3.0\n'
    table = PriceTable.load(write(tmp_path, text))
    assert table.rates_for("partial", True) == Rates(3.0, 4.0, 0.25, 4.0)
