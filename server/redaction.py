"""Secrets never leave the gateway: every text it says is redacted first.

An upstream may echo what it was sent (headers, URL) in any part of an error body: the
status message, a google.rpc detail (BadRequest descriptions, ErrorInfo metadata, Help links,
LocalizedMessage, DebugInfo...), an HTML page or plain text the gateway quotes as a snippet.
A secret the gateway sent upstream is therefore known here before the upstream can answer,
and each occurrence is replaced with `[REDACTED]` before the text reaches the caller, the
Python log, a stored record or a metric.

Secrets come from two places:

- `SECRETS`, the gateway's own credentials as it sends them: the configured API key and the
  Vertex AI bearer tokens (which rotate: the most recent few are kept). A small bounded
  registry, shared by the process.
- the call's own: in pass-through mode the caller's `x-goog-api-key`. It belongs to the task
  serving the call (a context variable), so one caller's key is never kept past its call.

`UpstreamClient` registers both as it builds each request's headers (`remember_sent`), and
`errors.UpstreamError` redacts its message and details when it is built (`current()`), so
no error made while serving a call can carry them, wherever it is made.

Each secret is matched as sent and as an echo may spell it: percent-encoded (upper- and
lowercase hex, `+` for spaces or not), JSON-escaped and HTML-escaped; of a secret of at
least `MIN_FRAGMENTED_SECRET_CHARS`, a piece of at least `MIN_FRAGMENT_CHARS` at its start or
end is redacted too (what a snippet cut in the middle of a key leaves). Independently of
what is registered, `key=` query parameters, `x-goog-api-key` / `authorization` header
echoes, bearer tokens and strings shaped like a Google API key or OAuth access token are
redacted. Secrets shorter than `MIN_SECRET_CHARS` are matched only by those patterns (as
plain substrings they would match ordinary words).
"""

from __future__ import annotations

import html
import json
import re
from collections import OrderedDict
from collections.abc import Iterable
from contextvars import ContextVar
from urllib.parse import quote, quote_plus

from google.protobuf import any_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

REDACTED = "[REDACTED]"
# Shorter secrets are not matched as substrings (they would match ordinary words).
MIN_SECRET_CHARS = 8
# A cut-off start or end of a secret this long or longer is redacted as well, for secrets
# long enough that such a piece cannot be an ordinary word (API keys are 39 characters).
MIN_FRAGMENT_CHARS = 8
MIN_FRAGMENTED_SECRET_CHARS = 16
# Gateway credentials kept for redaction: the API key and the latest Vertex AI tokens.
MAX_REMEMBERED_SECRETS = 16
# Request headers whose values are credentials.
SECRET_HEADERS = ("x-goog-api-key", "authorization")

_VALUE = r"[^\s\"'&#<>\\,;]+"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # ?key=... / &api_key=... in an echoed URL, whatever the value.
    (re.compile(r"(?i)(?<![\w-])((?:api[_-]?)?key=)" + _VALUE), r"\1" + REDACTED),
    # x-goog-api-key: ..., "x-goog-api-key": "...", authorization: Bearer ...
    (
        re.compile(r"(?i)(x-goog-api-key[\"']?\s*[:=]\s*[\"']?)" + _VALUE),
        r"\1" + REDACTED,
    ),
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)\s+)" + _VALUE),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{20,}"), r"\1" + REDACTED),
    # The shapes of a Google API key and of a Google OAuth access token.
    (re.compile(r"AIza[0-9A-Za-z_-]{35}"), REDACTED),
    (re.compile(r"\bya29\.[0-9A-Za-z._-]{8,}"), REDACTED),
)


def spellings(secret: str) -> set[str]:
    """The secret as sent and as an echo may encode it."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        html.escape(secret),
    }
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def header_secrets(name: str, value: str) -> list[str]:
    """The secrets in a request header's value (`Bearer <token>`: the token, and the whole)."""
    _scheme, _, credential = value.partition(" ")
    if name.lower() == "authorization" and credential:
        return [credential.strip(), value]
    return [value]


class Redactor:
    """Replaces each occurrence of its secrets (and the patterns above) with `[REDACTED]`."""

    __slots__ = ("_forms", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(dict.fromkeys(s for s in secrets if len(s) >= MIN_SECRET_CHARS))
        forms: set[str] = set()
        for secret in self._secrets:
            forms |= spellings(secret)
        # Longest first: a secret that contains another is replaced whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def with_secrets(self, extra: Iterable[str]) -> Redactor:
        extra = [s for s in extra if s not in self._secrets]
        return Redactor((*self._secrets, *extra)) if extra else self

    def redact(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        for form in self._forms:
            text = _redact_fragments(text, form)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        # latin-1 maps every byte to one character and back: ASCII secrets match as text.
        return self.redact(data.decode("latin-1")).encode("latin-1", "replace")

    def redact_message(self, message: Message) -> None:
        """Redact every string (and bytes) field of `message` in place, nested ones too."""
        _redact_message(self, message, 0)

    def redact_details(self, details: Iterable[any_pb2.Any]) -> tuple[any_pb2.Any, ...]:
        """Redacted copies of packed google.rpc details; a type this process cannot unpack
        is dropped (what it holds cannot be checked)."""
        redacted = []
        for detail in details:
            copy = _redact_any(self, detail, 0)
            if copy is not None:
                redacted.append(copy)
        return tuple(redacted)


def _redact_fragments(text: str, form: str) -> str:
    """Redact what is left of `form` where a cut took its end (a head) or its start (a tail)."""
    if len(form) < MIN_FRAGMENTED_SECRET_CHARS:
        return text
    head = form[:MIN_FRAGMENT_CHARS]
    start = text.find(head)
    while start != -1:
        end = start + MIN_FRAGMENT_CHARS
        while end < len(text) and end - start < len(form) and text[end] == form[end - start]:
            end += 1
        text = text[:start] + REDACTED + text[end:]
        start = text.find(head, start + len(REDACTED))
    tail = form[-MIN_FRAGMENT_CHARS:]
    end = text.find(tail)
    while end != -1:
        stop = end + MIN_FRAGMENT_CHARS
        start = end
        offset = len(form) - MIN_FRAGMENT_CHARS
        while start > 0 and offset > 0 and text[start - 1] == form[offset - 1]:
            start -= 1
            offset -= 1
        text = text[:start] + REDACTED + text[stop:]
        end = text.find(tail, start + len(REDACTED))
    return text


# Deeper messages are not walked (protobuf's own parsers stop at 100 levels).
_MAX_DEPTH = 100


def _redact_any(redactor: Redactor, packed: any_pb2.Any, depth: int) -> any_pb2.Any | None:
    type_name = packed.type_url.rpartition("/")[2]
    try:
        message_class = symbol_database.Default().GetSymbol(type_name)
    except KeyError:
        return None
    inner = message_class()
    try:
        inner.ParseFromString(packed.value)
    except DecodeError:
        return None
    _redact_message(redactor, inner, depth + 1)
    copy = any_pb2.Any()
    copy.Pack(inner)
    return copy


def _redact_message(redactor: Redactor, message: Message, depth: int) -> None:
    if depth > _MAX_DEPTH:
        message.Clear()
        return
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                _redact_map(redactor, field, value, depth)
            elif field.is_repeated:
                for item in value:
                    _redact_nested(redactor, item, depth)
            else:
                _redact_nested(redactor, value, depth)
        elif field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                value[:] = [redactor.redact(item) for item in value]
            else:
                setattr(message, field.name, redactor.redact(value))
        elif field.type == FieldDescriptor.TYPE_BYTES:
            if field.is_repeated:
                value[:] = [redactor.redact_bytes(item) for item in value]
            else:
                setattr(message, field.name, redactor.redact_bytes(value))


def _redact_nested(redactor: Redactor, message: Message, depth: int) -> None:
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        copy = _redact_any(redactor, message, depth)  # type: ignore[arg-type]
        if copy is None:
            message.Clear()
        else:
            message.CopyFrom(copy)
        return
    _redact_message(redactor, message, depth + 1)


def _redact_map(redactor: Redactor, field: FieldDescriptor, entries: object, depth: int) -> None:
    assert field.message_type is not None
    value_field = field.message_type.fields_by_name["value"]
    mapping: dict[object, object] = entries  # type: ignore[assignment]
    for key in list(mapping):
        value = mapping[key]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _redact_nested(redactor, value, depth)  # type: ignore[arg-type]
        new_key = redactor.redact(key) if isinstance(key, str) else key
        if value_field.type == FieldDescriptor.TYPE_STRING:
            new_value = redactor.redact(value)  # type: ignore[arg-type]
            if new_key != key:
                del mapping[key]
            mapping[new_key] = new_value
        elif new_key != key:
            kept = mapping[key]
            del mapping[key]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                mapping[new_key].CopyFrom(kept)  # type: ignore[attr-defined]
            else:
                mapping[new_key] = kept


class SecretRegistry:
    """The gateway's own credentials as last sent upstream, most recent last (bounded)."""

    def __init__(self, capacity: int = MAX_REMEMBERED_SECRETS) -> None:
        self._capacity = capacity
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._redactor: Redactor | None = Redactor()

    def add(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            return
        if secret in self._secrets:
            self._secrets.move_to_end(secret)
            return
        self._secrets[secret] = None
        while len(self._secrets) > self._capacity:
            self._secrets.popitem(last=False)
        self._redactor = None  # rebuilt when next needed (on an error: the rare path)

    def redactor(self) -> Redactor:
        if self._redactor is None:
            self._redactor = Redactor(self._secrets)
        return self._redactor

    def clear(self) -> None:
        self._secrets.clear()
        self._redactor = Redactor()


SECRETS = SecretRegistry()
_CALL_SECRETS: ContextVar[tuple[str, ...]] = ContextVar("gateway_call_secrets", default=())


def caller_credentials(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The credentials in a call's gRPC metadata (`x-goog-api-key`, `authorization`)."""
    found = {}
    for name, value in metadata:
        if name in SECRET_HEADERS and name not in found:
            found[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return found


def remember_sent(
    headers: dict[str, str], metadata: Iterable[tuple[str, str | bytes]] = ()
) -> tuple[str, ...]:
    """Register the credentials of a call before its request is sent; returns them.

    The gateway's own (in `headers`, not from the caller) join the process-wide registry.
    The caller's (its metadata's credentials, which pass-through mode sends upstream) are
    the call's own: kept in the context of the task serving the call, never past it.
    """
    from_caller = caller_credentials(metadata)
    secrets: list[str] = []
    for name, value in from_caller.items():
        secrets.extend(header_secrets(name, value))
    caller_values = set(from_caller.values())
    for name in SECRET_HEADERS:
        sent = headers.get(name)
        if not sent:
            continue
        for secret in header_secrets(name, sent):
            secrets.append(secret)
            if sent not in caller_values:
                SECRETS.add(secret)
    if secrets:
        _CALL_SECRETS.set(tuple(dict.fromkeys((*_CALL_SECRETS.get(), *secrets))))
    return tuple(dict.fromkeys(secrets))


def current(extra: Iterable[str] = ()) -> Redactor:
    """The redactor for the running call: the gateway's credentials and the call's own."""
    return SECRETS.redactor().with_secrets((*_CALL_SECRETS.get(), *extra))


def redact(text: str) -> str:
    """`text` with every secret known to the running call replaced."""
    return current().redact(text)
