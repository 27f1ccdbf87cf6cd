"""Label rules: every rule and boundary by example, then the validator against an oracle.

The oracle states Google's regular expressions again as `re` patterns whose character classes
are ranges of code points collected from the Unicode categories, independent of the
implementation's character-by-character checks.
"""

import re
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemini_gateway.server.labels import (
    MAX_KEY_CHARS,
    MAX_LABELS,
    MAX_VALUE_CHARS,
    LabelError,
    LabelSet,
    label_violations,
    parse_label_arg,
    parse_label_args,
)


def _class_of(categories: set[str], extra: str = "") -> str:
    """A regex character class body: the code points of `categories` as ranges, plus `extra`."""
    ranges: list[tuple[int, int]] = []
    for point in range(sys.maxunicode + 1):
        if unicodedata.category(chr(point)) in categories:
            if ranges and ranges[-1][1] == point - 1:
                ranges[-1] = (ranges[-1][0], point)
            else:
                ranges.append((point, point))
    body = "".join(rf"\U{low:08x}-\U{high:08x}" for low, high in ranges)
    return body + re.escape(extra)


_START = _class_of({"Ll", "Lo"})
_REST = _class_of({"Ll", "Lo", "Nd", "Nl", "No"}, "_-")
ORACLE_KEY = re.compile(f"[{_START}][{_REST}]{{0,62}}")
ORACLE_VALUE = re.compile(f"[{_REST}]{{0,63}}")


def oracle_ok(labels: dict[str, str]) -> bool:
    return len(labels) <= 64 and all(
        ORACLE_KEY.fullmatch(k) and ORACLE_VALUE.fullmatch(v) for k, v in labels.items()
    )


def expected_field(key: str) -> str:
    """The documented field path: exact up to 63 characters, else cut; non-printables escaped."""
    shown = key if len(key) <= 63 else key[:40] + "…"
    return "labels[" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown) + "]"


def only(labels: dict[str, str]) -> tuple[str, str]:
    """The single violation `labels` must produce."""
    violations = label_violations(labels)
    assert len(violations) == 1, violations
    return violations[0]


# --- examples --------------------------------------------------------------------------------


def test_limits() -> None:
    assert (MAX_LABELS, MAX_KEY_CHARS, MAX_VALUE_CHARS) == (64, 63, 63)


def test_valid_labels_and_no_labels() -> None:
    assert label_violations({"team": "research", "env": "prod-1", "cost_center": "a_b-9"}) == []
    assert label_violations({}) == []


def test_empty_value_is_allowed() -> None:
    assert label_violations({"flag": ""}) == []


def test_empty_key_is_refused() -> None:
    assert only({"": "x"}) == ("labels[]", "key must not be empty")


@pytest.mark.parametrize("key", ["k" * 63, "é" * 63, "日" * 63])
def test_key_of_63_characters_is_allowed(key: str) -> None:
    assert label_violations({key: "v"}) == []


def test_length_counts_characters_not_bytes() -> None:
    key = "é" * 63
    assert len(key.encode()) == 126
    assert label_violations({key: "é" * 63}) == []


@pytest.mark.parametrize("key", ["k" * 64, "é" * 64])
def test_key_of_64_characters_is_refused(key: str) -> None:
    field, text = only({key: "v"})
    assert field == f"labels[{key[:40]}…]"
    assert "at most 63 characters (has 64)" in text


def test_value_of_63_characters_allowed_64_refused() -> None:
    assert label_violations({"k": "v" * 63}) == []
    field, text = only({"k": "v" * 64})
    assert field == "labels[k]"
    assert text.startswith("value ") and "at most 63 characters (has 64)" in text


def test_64_labels_allowed_65_refused_with_count_and_limit() -> None:
    labels = {f"k{i}": "v" for i in range(64)}
    assert label_violations(labels) == []
    labels["k64"] = "v"
    assert label_violations(labels) == [
        ("labels", "at most 64 labels are allowed per call (got 65)")
    ]


@pytest.mark.parametrize("key", ["1abc", "_abc", "-abc", "٣abc", "²abc"])
def test_key_must_start_with_a_letter(key: str) -> None:
    field, text = only({key: "v"})
    assert field == f"labels[{key}]"
    assert (
        text
        == f"key {key!r} must start with a lowercase letter or a letter without case such as CJK"
    )


@pytest.mark.parametrize("text", ["Team", "tEam", "ÉTÉ", "Привет", "привеТ", "ǅx"])
def test_uppercase_and_titlecase_refused_in_any_script(text: str) -> None:
    assert label_violations({text: "v"}) != []
    assert label_violations({"k": text}) != []


@pytest.mark.parametrize(
    "text", ["é", "ñandú", "日本", "привет", "straße", "ελληνικά", "עברית", "ไทย", "한국어"]
)
def test_international_letters_accepted(text: str) -> None:
    assert label_violations({text: text}) == []


@pytest.mark.parametrize("value", ["0", "2024", "٣", "²", "½", "Ⅻ", "a_b-c", "_", "-"])
def test_values_may_start_with_numbers_and_punctuation_allowed(value: str) -> None:
    assert label_violations({"k": value}) == []


@pytest.mark.parametrize("char", [" ", ".", "=", ":", "/", "@", "\n", "\u200b", "ʰ", "\u0301"])
def test_other_characters_refused(char: str) -> None:
    field, text = only({"k": f"a{char}b"})
    assert field == "labels[k]"
    assert f"(not {char!r})" in text


def test_decomposed_accent_refused_composed_accepted() -> None:
    composed = "café"
    decomposed = unicodedata.normalize("NFD", composed)
    assert label_violations({composed: "v"}) == []
    assert label_violations({decomposed: "v"}) != []


def test_one_description_names_every_broken_rule_of_a_label() -> None:
    field, text = only({"Bad Key!": "Bad Value"})
    assert field == "labels[Bad Key!]"
    assert text == (
        "key 'Bad Key!' must start with a lowercase letter or a letter without case such as CJK"
        " and must contain only lowercase letters (any script), letters without case such as"
        " CJK, numbers, '_' and '-' (not 'B', ' ', 'K', '!'); value 'Bad Value' must contain"
        " only lowercase letters (any script), letters without case such as CJK, numbers, '_'"
        " and '-' (not 'B', ' ', 'V')"
    )


def test_too_long_and_bad_characters_named_together() -> None:
    _, text = only({"k": "X" * 70})
    assert "at most 63 characters (has 70) and must contain only" in text


def test_violations_sorted_by_key_with_the_count_first() -> None:
    labels = {f"k{i:02}": "v" for i in range(70)}
    labels.update({"Zed": "v", "Alpha": "v", "ok": "v", "beta": "B"})
    fields = [field for field, _ in label_violations(labels)]
    assert fields == ["labels", "labels[Alpha]", "labels[Zed]", "labels[beta]"]


def test_5kb_value_gives_a_short_message() -> None:
    field, text = only({"prompt": "x" * 5000 + "Y"})
    assert field == "labels[prompt]"
    assert "(has 5001)" in text
    assert "'" + "x" * 40 + "'…" in text
    assert len(text) < 250


def test_5kb_key_is_cut_in_field_and_message() -> None:
    key = "K" * 5000
    field, text = only({key: "v"})
    assert field == "labels[" + "K" * 40 + "…]"
    assert len(text) < 300


def test_keys_and_values_quoted_on_one_line() -> None:
    field, text = only({"a\nb": "c'\"\x1b[31m"})
    assert field == "labels[a\\nb]"
    assert "\n" not in text and "\x1b" not in text
    assert "key 'a\\nb'" in text


def test_values_of_other_types_are_reported_not_raised() -> None:
    assert only({"version": 2}) == ("labels[version]", "value must be a string, not int")  # type: ignore[dict-item]


# --- LabelSet --------------------------------------------------------------------------------


def test_labelset_is_an_immutable_sorted_mapping() -> None:
    labels = LabelSet.validated({"b": "2", "a": "1"})
    assert list(labels) == ["a", "b"]
    assert labels["a"] == "1" and len(labels) == 2 and "b" in labels
    assert labels == {"a": "1", "b": "2"}
    assert hash(labels) == hash(LabelSet({"a": "1", "b": "2"}))
    with pytest.raises(TypeError):
        labels["c"] = "3"  # type: ignore[index]
    with pytest.raises(AttributeError):
        labels.extra = 1  # type: ignore[attr-defined]


def test_as_dict_is_a_copy() -> None:
    labels = LabelSet.validated({"a": "1"})
    copy = labels.as_dict()
    copy["b"] = "2"
    assert labels == {"a": "1"} and type(copy) is dict


def test_validated_raises_label_error_with_every_violation() -> None:
    with pytest.raises(LabelError) as caught:
        LabelSet.validated({"Team": "x", "": "y", "ok": "fine"})
    assert isinstance(caught.value, ValueError)
    assert [field for field, _ in caught.value.violations] == ["labels[]", "labels[Team]"]
    assert "labels[Team]: key 'Team'" in str(caught.value)


def test_constructor_validates_too() -> None:
    assert LabelSet() == {}
    with pytest.raises(LabelError):
        LabelSet({"Bad": "x"})


def test_merged_own_labels_override_defaults() -> None:
    merged = LabelSet.merged({"team": "a", "env": "prod"}, {"team": "b", "run": "7"})
    assert merged.as_dict() == {"env": "prod", "run": "7", "team": "b"}


def test_merged_counts_the_union() -> None:
    defaults = {f"d{i}": "v" for i in range(40)}
    assert len(LabelSet.merged(defaults, {f"d{i}": "w" for i in range(30)})) == 40
    own = {f"o{i}": "v" for i in range(24)}
    assert len(LabelSet.merged(defaults, own)) == 64
    own["o24"] = "v"
    with pytest.raises(LabelError) as caught:
        LabelSet.merged(defaults, own)
    assert caught.value.violations == [
        ("labels", "at most 64 labels are allowed per call (got 65)")
    ]


def test_merged_reports_a_bad_default() -> None:
    with pytest.raises(LabelError) as caught:
        LabelSet.merged({"Env": "prod"}, {"team": "a"})
    assert [field for field, _ in caught.value.violations] == ["labels[Env]"]


# --- --label key=value -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("team=research", ("team", "research")),
        ("flag=", ("flag", "")),
        ("日本=東京", ("日本", "東京")),
    ],
)
def test_parse_label_arg(text: str, pair: tuple[str, str]) -> None:
    assert parse_label_arg(text) == pair


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("=x", "label key must not be empty"),
        ("team", "label 'team' must be written key=value"),
        ("a=b=c", "label value 'b=c' must contain only"),
        ("Team Name=x", "label key 'Team Name' must start with a lowercase letter"),
        ("team=Research", "label value 'Research' must contain only lowercase letters"),
        ("1team=x", "label key '1team' must start with"),
    ],
)
def test_parse_label_arg_names_the_rule(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_label_arg(text)
    assert str(caught.value).startswith(message)


def test_parse_label_arg_names_allowed_characters() -> None:
    with pytest.raises(ValueError, match=r"must contain only lowercase letters .* '_' and '-'"):
        parse_label_arg("Team Name=x")


def test_parse_label_arg_messages_are_one_short_line() -> None:
    for text in ["a\nb=x", "k=" + "v" * 5000, "K" * 5000 + "=v", "\x1b[2J"]:
        with pytest.raises(ValueError) as caught:
            parse_label_arg(text)
        message = str(caught.value)
        assert message.isprintable() and len(message) < 300, message


def test_parse_label_args_refuses_repeated_keys_and_too_many() -> None:
    assert parse_label_args(["b=2", "a=1"]) == {"a": "1", "b": "2"}
    with pytest.raises(ValueError, match="label key 'team' is given more than once"):
        parse_label_args(["team=a", "team=b"])
    with pytest.raises(ValueError, match=r"at most 64 labels .* \(got 65\)"):
        parse_label_args([f"k{i}=v" for i in range(65)])


# --- properties against the oracle -----------------------------------------------------------

# Category first, then a character of it: drawn from all code points at once, the big
# categories (Lo, Cn) would leave small ones such as Lt or Lm almost never tried.
_CATEGORIES = ["Ll", "Lo", "Lu", "Lt", "Lm", "Mn", "Mc", "Nd", "Nl", "No", "Pc", "Pd", "Po"]
_CATEGORIES += ["Sm", "Sk", "Zs", "Cc", "Cf"]
_INTERESTING = st.sampled_from(_CATEGORIES).flatmap(lambda c: st.characters(categories=[c]))
_NEAR_VALID = st.characters(categories=["Ll", "Lo", "Nd", "Nl", "No"], include_characters="_-")
texts = st.one_of(
    st.text(max_size=70),
    st.text(_INTERESTING, max_size=70),
    st.text(_NEAR_VALID, max_size=70),
    st.text(_NEAR_VALID, min_size=60, max_size=66),
    st.builds(
        lambda a, b: a + b, st.text(_NEAR_VALID, max_size=30), st.text(_INTERESTING, max_size=3)
    ),
    # A valid-looking label with one character of any category somewhere after the first.
    st.builds(
        lambda first, middle, odd, last: first + middle + odd + last,
        st.characters(categories=["Ll", "Lo"]),
        st.text(_NEAR_VALID, max_size=10),
        st.one_of(_INTERESTING, st.characters()),
        st.text(_NEAR_VALID, max_size=10),
    ),
)
fast = settings(max_examples=200, deadline=None)


@fast
@given(key=texts, value=texts)
def test_one_label_matches_the_oracle(key: str, value: str) -> None:
    violations = label_violations({key: value})
    assert (violations == []) == oracle_ok({key: value})
    assert len(violations) <= 1
    for field, text in violations:
        assert field.startswith("labels[") and field.endswith("]")
        assert text.isprintable() and len(text) < 1500


short = st.text(_NEAR_VALID, min_size=1, max_size=6)
label_dicts = st.one_of(
    st.dictionaries(texts, texts, max_size=80),
    st.dictionaries(short, st.text(_NEAR_VALID, max_size=6), min_size=60, max_size=80),
)


@settings(max_examples=100, deadline=None)
@given(label_dicts)
def test_label_dicts_match_the_oracle(labels: dict[str, str]) -> None:
    violations = label_violations(labels)
    assert (violations == []) == oracle_ok(labels)
    bad = sorted(
        k for k, v in labels.items() if not (ORACLE_KEY.fullmatch(k) and ORACLE_VALUE.fullmatch(v))
    )
    per_label = [field for field, _ in violations if field != "labels"]
    assert per_label == [expected_field(k) for k in bad]
    assert [v[0] == "labels" for v in violations].count(True) == (len(labels) > 64)
    assert violations == sorted(violations, key=lambda v: v[0] != "labels")


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(_NEAR_VALID, max_size=8), st.text(_NEAR_VALID, max_size=8), max_size=80)
)
def test_labelset_accepts_exactly_what_the_oracle_accepts(labels: dict[str, str]) -> None:
    if oracle_ok(labels):
        assert LabelSet.validated(labels).as_dict() == labels
    else:
        with pytest.raises(LabelError):
            LabelSet.validated(labels)


@settings(max_examples=150, deadline=None)
@given(key=texts, value=texts)
def test_parse_label_arg_matches_the_oracle(key: str, value: str) -> None:
    text = f"{key}={value}"
    if oracle_ok({key: value}):
        assert parse_label_arg(text) == (key, value)
    else:
        with pytest.raises(ValueError) as caught:
            parse_label_arg(text)
        assert "\n" not in str(caught.value)
