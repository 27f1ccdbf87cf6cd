"""Redactor: every spelling of a secret, cut-off fragments, patterns, protobuf details, scope."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gemini_gateway.server import errors, redaction
from gemini_gateway.server.redaction import REDACTED, Redactor, SecretRegistry

SECRET = "s3cret+key/with=odd&chars"
TOKEN = "tok.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    redaction.SECRETS.clear()
    yield
    redaction.SECRETS.clear()


@pytest.mark.parametrize(
    "spelling",
    [
        SECRET,
        quote(SECRET, safe=""),
        quote(SECRET),
        quote_plus(SECRET),
        quote(SECRET, safe="").lower(),
        json.dumps(SECRET)[1:-1],
        html.escape(SECRET),
    ],
)
def test_every_spelling_of_a_secret_is_redacted(spelling: str) -> None:
    text = f"before {spelling} after"
    assert Redactor([SECRET]).redact(text) == f"before {REDACTED} after"


def test_a_secret_cut_off_by_a_snippet_is_redacted() -> None:
    redactor = Redactor([SECRET])
    assert redactor.redact("body: x-key " + SECRET[:11]) == f"body: x-key {REDACTED}"
    assert redactor.redact(SECRET[-9:] + " rest") == f"{REDACTED} rest"
    assert redactor.redact("first " + SECRET[:5]) == "first " + SECRET[:5]  # too short to tell


def test_patterns_redact_credentials_nobody_registered() -> None:
    redactor = Redactor()
    google_key = "AIza" + "B" * 35
    cases = {
        "GET /v1beta/models?key=abc123&pageSize=2": f"GET /v1beta/models?key={REDACTED}&pageSize=2",
        "https://x.test/?api_key=zzz": f"https://x.test/?api_key={REDACTED}",
        "x-goog-api-key: whatever-it-is\nhost: h": f"x-goog-api-key: {REDACTED}\nhost: h",
        '{"x-goog-api-key": "v"}': f'{{"x-goog-api-key": "{REDACTED}"}}',
        "Authorization: Bearer abc.def": f"Authorization: Bearer {REDACTED}",
        "sent bearer " + TOKEN: f"sent bearer {REDACTED}",
        f"key {google_key} leaked": f"key {REDACTED} leaked",
        "token ya29.a0AfH6SMBx-yz": f"token {REDACTED}",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected
    # Ordinary words are left alone.
    plain = "Request had invalid authentication credentials; monkey=1; the bearer token"
    assert redactor.redact(plain) == plain


def test_short_secrets_are_not_matched_as_substrings() -> None:
    assert Redactor(["abc"]).redact("abc abcdef") == "abc abcdef"
    assert Redactor(["abc"]).secrets == ()


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def test_every_google_rpc_detail_text_is_redacted() -> None:
    details = (
        _pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="x-goog-api-key", description=f"value {SECRET}"
                    )
                ]
            )
        ),
        _pack(
            error_details_pb2.ErrorInfo(
                reason="ECHO", metadata={"header": SECRET, f"k-{SECRET}": "v"}
            )
        ),
        _pack(
            error_details_pb2.Help(
                links=[error_details_pb2.Help.Link(description="d", url=f"https://h/?k={SECRET}")]
            )
        ),
        _pack(error_details_pb2.LocalizedMessage(locale="en", message=SECRET)),
        _pack(error_details_pb2.DebugInfo(stack_entries=[SECRET, "x"], detail=SECRET)),
        _pack(error_details_pb2.RequestInfo(request_id=SECRET, serving_data=SECRET)),
        _pack(
            status_pb2.Status(
                message="inner", details=[_pack(error_details_pb2.LocalizedMessage(message=SECRET))]
            )
        ),
    )
    redacted = Redactor([SECRET]).redact_details(details)
    assert len(redacted) == len(details)
    for original, copy in zip(details, redacted, strict=True):
        assert copy.type_url == original.type_url
        assert SECRET.encode() not in copy.SerializeToString()
        assert REDACTED.encode() in copy.SerializeToString()
    info = error_details_pb2.ErrorInfo()
    redacted[1].Unpack(info)
    assert dict(info.metadata) == {"header": REDACTED, f"k-{REDACTED}": "v"}
    assert details[1].value != redacted[1].value  # copies: the originals are untouched


def test_a_detail_of_unknown_type_is_dropped() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/echo.Unknown", value=SECRET.encode())
    known = _pack(error_details_pb2.RetryInfo())
    assert Redactor([SECRET]).redact_details((unknown, known)) == (known,)


def test_upstream_error_is_redacted_when_built() -> None:
    redaction.SECRETS.add(SECRET)
    detail = _pack(error_details_pb2.LocalizedMessage(message=f"echo {SECRET}"))
    error = errors.UpstreamError(grpc.StatusCode.INTERNAL, f"echo {SECRET}", (detail,))
    assert error.message == f"echo {REDACTED}"
    assert SECRET not in str(error)
    assert SECRET.encode() not in error.to_status_proto().SerializeToString()
    ((_, trailer),) = error.trailing_metadata()
    assert SECRET.encode() not in trailer


def test_registry_keeps_the_most_recent_secrets() -> None:
    registry = SecretRegistry(capacity=2)
    for secret in ("first-secret", "second-secret", "first-secret", "third-secret"):
        registry.add(secret)
    assert registry.redactor().secrets == ("first-secret", "third-secret")
    registry.add("tiny")
    assert registry.redactor().secrets == ("first-secret", "third-secret")


async def test_the_callers_key_belongs_to_its_call_only() -> None:
    caller_key = "caller-key-0123456789"

    async def one_call() -> str:
        sent = redaction.remember_sent(
            {"x-goog-api-key": caller_key}, (("x-goog-api-key", caller_key),)
        )
        assert sent == (caller_key,)
        return redaction.redact(f"echo {caller_key}")

    assert await asyncio.create_task(one_call()) == f"echo {REDACTED}"
    # Not kept process-wide, nor seen by another call's task.
    assert redaction.SECRETS.redactor().secrets == ()
    assert await asyncio.create_task(_redact_later(caller_key)) == f"echo {caller_key}"


async def _redact_later(text: str) -> str:
    return redaction.redact(f"echo {text}")


async def test_the_gateways_own_credentials_are_kept_process_wide() -> None:
    async def one_call() -> None:
        redaction.remember_sent({"authorization": f"Bearer {TOKEN}"}, ())

    await asyncio.create_task(one_call())
    assert TOKEN in redaction.SECRETS.redactor().secrets
    assert redaction.redact(f"token={TOKEN}") == f"token={REDACTED}"
