r"""Label rules of Vertex AI, checked in one place for the server and the CLI.

Labels break down cost: billing reports filter and group by them, so a label the upstream
would refuse must be refused by the gateway first, with the same rules. Google Cloud states
them as regular expressions over Unicode categories:

    key    [\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}
    value  [\p{Ll}\p{Lo}\p{N}_-]{0,63}

with at most 64 labels per call and unique keys. So lowercase letters of any script (Ll) and
letters that have no case, such as CJK (Lo), are allowed; uppercase and titlecase letters (Lu,
Lt), modifier letters (Lm) and combining marks (Mn, Mc) are not. A decomposed 'é' (e + U+0301)
is therefore refused where the composed 'é' is accepted: the gateway checks the code points the
upstream will see and normalises nothing. Lengths count code points, not UTF-8 bytes.
Categories come from Python's `unicodedata`, which may differ from Google's Unicode version
for characters assigned very recently.

Violations are (field path, description) pairs, as the forwarder turns them into a
google.rpc.BadRequest. Keys and values are quoted with `repr` (one line, control characters
escaped) and cut to their first 40 characters, so a 5 KB label cannot blow up an error message.
The field path `labels[<key>]` carries the key exactly when it is at most 63 characters long,
so a client can match it to what it sent (only characters that are not printable are escaped);
a longer key is invalid for its length anyway and is cut the same way as in the descriptions,
which keeps the path bounded (two such keys sharing their first 40 characters share a path).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Iterator, Mapping

MAX_LABELS = 64
MAX_KEY_CHARS = 63
MAX_VALUE_CHARS = 63
# How much of a key or value an error message shows.
SHOWN_CHARS = 40
# How many distinct refused characters a description lists.
SHOWN_BAD_CHARS = 5

_START_CATEGORIES = frozenset({"Ll", "Lo"})
_ALLOWED_CATEGORIES = frozenset({"Ll", "Lo", "Nd", "Nl", "No"})
_ALLOWED_PUNCTUATION = frozenset("_-")

ALLOWED_CHARACTERS = (
    "lowercase letters (any script), letters without case such as CJK, numbers, '_' and '-'"
)
_START_RULE = "must start with a lowercase letter or a letter without case such as CJK"

Violations = list[tuple[str, str]]


class LabelError(ValueError):
    """Labels that break the rules; `violations` holds every (field, description) pair."""

    def __init__(self, violations: Violations) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{field}: {text}" for field, text in self.violations))


def _allowed(char: str) -> bool:
    return char in _ALLOWED_PUNCTUATION or unicodedata.category(char) in _ALLOWED_CATEGORIES


def _quoted(text: str) -> str:
    """`text` as a one-line quoted excerpt, safe to put in a message of bounded length."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}…"


def _escaped(text: str) -> str:
    """`text` with each character that is not printable written as its escape sequence."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _field(key: str) -> str:
    shown = key if len(key) <= MAX_KEY_CHARS else key[:SHOWN_CHARS] + "…"
    return f"labels[{_escaped(shown)}]"


def _character_rule(text: str) -> str | None:
    """The allowed-characters rule with the first few refused characters, if any is refused."""
    refused: list[str] = []
    for char in text:
        if not _allowed(char) and char not in refused:
            refused.append(char)
            if len(refused) == SHOWN_BAD_CHARS:
                break
    if not refused:
        return None
    return f"must contain only {ALLOWED_CHARACTERS} (not {', '.join(map(repr, refused))})"


def _key_problem(key: object) -> str | None:
    """One description naming every rule the key breaks, or None for a valid key."""
    if not isinstance(key, str):
        return f"key must be a string, not {type(key).__name__}"
    if not key:
        return "key must not be empty"
    rules: list[str] = []
    if len(key) > MAX_KEY_CHARS:
        rules.append(f"must be at most {MAX_KEY_CHARS} characters (has {len(key)})")
    if unicodedata.category(key[0]) not in _START_CATEGORIES:
        rules.append(_START_RULE)
    character_rule = _character_rule(key)
    if character_rule:
        rules.append(character_rule)
    return f"key {_quoted(key)} {' and '.join(rules)}" if rules else None


def _value_problem(value: object) -> str | None:
    """One description naming every rule the value breaks, or None for a valid value."""
    if not isinstance(value, str):
        return f"value must be a string, not {type(value).__name__}"
    rules: list[str] = []
    if len(value) > MAX_VALUE_CHARS:
        rules.append(f"must be at most {MAX_VALUE_CHARS} characters (has {len(value)})")
    character_rule = _character_rule(value)
    if character_rule:
        rules.append(character_rule)
    return f"value {_quoted(value)} {' and '.join(rules)}" if rules else None


def _label_problem(key: object, value: object) -> str | None:
    """One description of what is wrong with the label, or None when it is valid."""
    if (
        type(key) is str
        and type(value) is str
        and len(key) <= MAX_KEY_CHARS
        and len(value) <= MAX_VALUE_CHARS
    ):
        return _short_label_problem(key, value)
    return _checked_label_problem(key, value)


# The same labels come with call after call: the verdicts on the latest few thousand pairs of
# allowed length are kept, so most calls' labels cost one lookup each, not a check of every
# character.
@functools.lru_cache(maxsize=4096)
def _short_label_problem(key: str, value: str) -> str | None:
    return _checked_label_problem(key, value)


def _checked_label_problem(key: object, value: object) -> str | None:
    problems = [p for p in (_key_problem(key), _value_problem(value)) if p]
    return "; ".join(problems) or None


def label_violations(labels: Mapping[str, str]) -> Violations:
    """Every broken rule as (field, description); empty when the labels are valid.

    One pair per bad label, field `labels[<key>]`, in key order; first, one pair with field
    `labels` when there are more than MAX_LABELS labels.
    """
    violations: Violations = []
    if len(labels) > MAX_LABELS:
        violations.append(
            ("labels", f"at most {MAX_LABELS} labels are allowed per call (got {len(labels)})")
        )
    for key, value in sorted(labels.items(), key=lambda item: str(item[0])):
        problem = _label_problem(key, value)
        if problem:
            violations.append((_field(str(key)), problem))
    return violations


class LabelSet(Mapping[str, str]):
    """An immutable set of labels that keeps to the rules: every instance has been validated.

    Iterates in key order, so what is recorded and sent is the same for the same labels.
    """

    __slots__ = ("_labels",)

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        labels = {} if labels is None else labels
        violations = label_violations(labels)
        if violations:
            raise LabelError(violations)
        self._labels: dict[str, str] = dict(sorted(labels.items()))

    @classmethod
    def validated(cls, labels: Mapping[str, str]) -> LabelSet:
        """The labels as a LabelSet; raises LabelError listing every broken rule."""
        return cls(labels)

    @classmethod
    def merged(cls, defaults: Mapping[str, str], own: Mapping[str, str]) -> LabelSet:
        """Default labels overridden by the call's own, validated as the one set that is sent.

        So defaults plus own labels beyond MAX_LABELS are refused, even when each part is fine.
        A bad default is reported too: check defaults once when they are configured.
        """
        return cls({**defaults, **own})

    def as_dict(self) -> dict[str, str]:
        """A plain, mutable copy (for JSON and protobuf maps)."""
        return dict(self._labels)

    def __getitem__(self, key: str) -> str:
        return self._labels[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __hash__(self) -> int:
        return hash(frozenset(self._labels.items()))

    def __repr__(self) -> str:
        return f"LabelSet({self._labels!r})"


def parse_label_arg(text: str) -> tuple[str, str]:
    """(key, value) from a CLI `--label key=value`; ValueError with a one-line message.

    Splits on the first '='; the value may be empty. Nothing is stripped or lowercased, so
    what is checked is exactly what will be sent.
    """
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"label {_quoted(text)} must be written key=value")
    problem = _label_problem(key, value)
    if problem:
        raise ValueError(f"label {problem}")
    return key, value


def parse_label_args(texts: Iterable[str]) -> LabelSet:
    """A LabelSet from repeated `--label key=value` options.

    Keys must be unique: a repeated key is refused rather than silently overridden.
    """
    labels: dict[str, str] = {}
    for text in texts:
        key, value = parse_label_arg(text)
        if key in labels:
            raise ValueError(f"label key {_quoted(key)} is given more than once")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels are allowed per call (got {len(labels)})")
    return LabelSet(labels)
