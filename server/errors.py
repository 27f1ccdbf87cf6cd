"""REST error bodies -> gRPC status with google.rpc details.

The mapping is one table, as data. Google's error body names its google.rpc.Code in
`error.status`, which is authoritative; the HTTP status is only a fallback for bodies
that cannot be parsed (the API-level mapping documented in google/rpc/code.proto, not
gRPC's transport-level HTTP table).

Upstream faults are never blamed on the caller. The rule, by what the upstream did:

=====================================================  ==================  =====================
upstream                                               status              message starts
=====================================================  ==================  =====================
non-2xx with a Google error body                       its `error.status`  its own message
non-2xx with any other body (HTML, text, cut JSON)     by HTTP status;     "upstream returned
                                                       unreadable 5xx is   HTTP <n> ..."
                                                       UNAVAILABLE
answer (body or stream event) not valid UTF-8,         INTERNAL            "upstream sent ..."
not JSON, not a JSON object, or not fitting the
response message
JSON nested deeper than the parsers allow              INTERNAL            "upstream sent ..."
answer larger than `max_upstream_body_mb`              RESOURCE_EXHAUSTED  names the limit and
stream event larger than `max_sse_event_mb`                                the setting
stream ending inside an event (no closing blank        UNAVAILABLE         "upstream stream
line, incomplete JSON or UTF-8): the transport broke                       ended ..."
connection refused, reset or closed mid-body           UNAVAILABLE         "cannot reach ..." /
                                                                           "upstream closed ..."
time limit (the call's deadline or the default)        DEADLINE_EXCEEDED   "upstream did not ..."
=====================================================  ==================  =====================

INTERNAL says the upstream answered, completely, with something broken (asking again
gets the same); UNAVAILABLE that the exchange itself broke (asking again may work).
Messages name what went wrong in words, never a Python class name.

No secret leaves through an error: an UpstreamError redacts its message and details when it
is built (redaction.py), and body snippets are redacted before they are cut.

The caller's own faults are INVALID_ARGUMENT, each exception mapped explicitly (there is no
catch-all for ValueError): the gateway's exceptions for a bad request are listed in
CALLER_ERRORS (routes.UnroutableRequest for a request that fits no http rule, the filter,
label and store query errors). Any other exception is a gateway bug: INTERNAL with a fixed
message, its details in the log (redacted), never in the status.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, json_format, symbol_database
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gemini_gateway.server import redaction

log = logging.getLogger(__name__)

# Imported for its side effect: registers google.rpc.* detail types in the default pool,
# so details named by "@type" can be parsed.
_DETAIL_TYPES = error_details_pb2

# google.rpc.Code name -> gRPC status code (the names are the same by definition).
STATUS_BY_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

# HTTP status -> gRPC status, for error bodies without a usable `error.status`.
# Each row is the HTTP mapping given for that code in google/rpc/code.proto; where several
# codes share an HTTP status, the row holds the one code.proto lists as its general case.
STATUS_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,  # also FAILED_PRECONDITION, OUT_OF_RANGE
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,  # also ALREADY_EXISTS
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,  # also UNKNOWN, DATA_LOSS
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Gateway-side statuses of a bad gateway hop: a proxy's 502, or any 5xx we cannot read.
_UNREADABLE_5XX = grpc.StatusCode.UNAVAILABLE


class UpstreamError(Exception):
    """An error to end the gRPC call with: code, message and google.rpc details."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: tuple[any_pb2.Any, ...] = ()
    ) -> None:
        # Built while serving a call: whatever the call sent upstream is redacted here, so
        # no copy of the message (caller, log, stored record) can carry it.
        redactor = redaction.current()
        message = redactor.redact(message)
        details = redactor.redact_details(details) if details else ()
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def redact(self, redactor: redaction.Redactor) -> UpstreamError:
        """Redact message and details in place (for an error made outside the call's task,
        whose secrets it could not know when it was built); returns self."""
        self.message = redactor.redact(self.message)
        self.details = redactor.redact_details(self.details) if self.details else ()
        self.args = (self.code, self.message)
        return self

    def to_status_proto(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=list(self.details)
        )

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """grpc-status-details-bin, which grpcio-status and Google's clients decode."""
        if not self.details:
            return ()
        return (("grpc-status-details-bin", self.to_status_proto().SerializeToString()),)

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(self.code, self.message, self.trailing_metadata())


# Exceptions of the gateway's own modules that mean the caller's request is wrong, by the
# full name of their class (named, not imported: errors.py sits below the modules that raise
# them), each with the request field it blames when the exception does not say. They end
# the call INVALID_ARGUMENT with their text; one with `violations` lists them in a BadRequest.
CALLER_ERRORS: dict[str, str | None] = {
    "gemini_gateway.server.routes.UnroutableRequest": None,  # carries its own `field`
    "gemini_gateway.server.labels.LabelError": "labels",  # carries `violations`
    "gemini_gateway.server.filters.FilterError": "filter",
    "gemini_gateway.server.store.logs.LogQueryError": None,
    "gemini_gateway.server.store.usage.UsageQueryError": None,
    "gemini_gateway.server.store.datasets.DatasetError": None,  # carries its own `field`
    "gemini_gateway.server.store.runs.EmptyDataset": "dataset",
}

# What a caller is told when the gateway itself fails on its request (a bug): no exception
# text, which could quote anything, and never a Python class name.
INTERNAL_MESSAGE = "the gateway failed while handling this request; the failure is logged"


def caller_error(exc: BaseException, field: str | None = None) -> UpstreamError | None:
    """The INVALID_ARGUMENT a CALLER_ERRORS exception stands for; None for any other."""
    for cls in type(exc).__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name not in CALLER_ERRORS:
            continue
        violations = getattr(exc, "violations", None)
        if isinstance(violations, list) and violations:
            return bad_request(violations)
        own_field = getattr(exc, "field", None)
        blamed = own_field if isinstance(own_field, str) and own_field else None
        return invalid_argument(str(exc), field=blamed or CALLER_ERRORS[name] or field)
    return None


def client_status(exc: BaseException, field: str | None = None) -> UpstreamError:
    """The status a call that failed with `exc` ends with (as aborting_on_error sends it):
    UpstreamError as it is, a caller error (CALLER_ERRORS) as INVALID_ARGUMENT, anything
    else as INTERNAL with INTERNAL_MESSAGE. For recorders and meters: logs nothing."""
    if isinstance(exc, UpstreamError):
        return exc
    mapped = caller_error(exc, field)
    if mapped is not None:
        return mapped
    return UpstreamError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def as_upstream_error(exc: Exception, field: str | None = None) -> UpstreamError:
    """client_status(), logging an unexpected exception with its traceback (redacted),
    which stays in the gateway's log."""
    if isinstance(exc, UpstreamError):
        return exc
    mapped = caller_error(exc, field)
    if mapped is not None:
        return mapped
    # The traceback goes to the log redacted, like everything else the gateway logs.
    log.error(
        "unexpected failure while handling a call:\n%s",
        redaction.redact("".join(traceback.format_exception(exc)).rstrip()),
    )
    return UpstreamError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


@asynccontextmanager
async def aborting_on_error(
    context: grpc.aio.ServicerContext, field: str | None = None
) -> AsyncIterator[None]:
    """End the gRPC call with the error's status: UpstreamError as it is; the gateway's own
    exceptions for a bad request (CALLER_ERRORS, e.g. routes.UnroutableRequest) as
    INVALID_ARGUMENT naming their field, or `field` when they name none; any other
    exception, a gateway bug, as INTERNAL with a fixed message (never the exception's
    class or text; it is logged instead). gRPC's own abort passes through."""
    try:
        yield
    except grpc.aio.AbortError:
        raise  # the call was ended already (context.abort)
    except Exception as exc:
        await abort_for(context, exc, field)


async def abort_for(
    context: grpc.aio.ServicerContext, exc: Exception, field: str | None = None
) -> NoReturn:
    """aborting_on_error's ending of a call, for a handler that catches `exc` itself (the
    forwarder's, where a context manager per call costs more than the try it replaces)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, UpstreamError):
        await exc.abort(context)
    await as_upstream_error(exc, field).abort(context)
    raise AssertionError("abort returned")  # pragma: no cover (abort always raises)


def code_for_http_status(http_status: int) -> grpc.StatusCode:
    if http_status in STATUS_BY_HTTP:
        return STATUS_BY_HTTP[http_status]
    if 500 <= http_status < 600:
        return _UNREADABLE_5XX
    if 400 <= http_status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNKNOWN


def details_to_any(details: list[object]) -> tuple[any_pb2.Any, ...]:
    """Convert REST `details` (JSON with "@type") to packed google.protobuf.Any values.

    Types this process does not know are dropped (logged at debug level): without the
    message type there is no binary form to pack.
    """
    db = symbol_database.Default()
    packed = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        type_url = detail.get("@type", "")
        type_name = type_url.rpartition("/")[2]
        try:
            message_class = db.GetSymbol(type_name)
        except KeyError:
            log.debug("dropping error detail of unknown type %s", redaction.redact(str(type_url)))
            continue
        fields = {k: v for k, v in detail.items() if k != "@type"}
        message = message_class()
        try:
            json_format.ParseDict(fields, message, ignore_unknown_fields=True)
        except (json_format.ParseError, RecursionError):
            log.debug("dropping unparsable error detail of type %s", type_name)
            continue
        any_detail = any_pb2.Any()
        any_detail.Pack(message)
        packed.append(any_detail)
    return tuple(packed)


def from_error_object(error: object, http_status: int) -> UpstreamError | None:
    """Build an UpstreamError from the value of a REST `{"error": ...}` body, if well-formed."""
    if not isinstance(error, dict):
        return None
    status_name = error.get("status")
    code = STATUS_BY_NAME.get(status_name) if isinstance(status_name, str) else None
    if code is None or code is grpc.StatusCode.OK:
        numeric = error.get("code")
        code = code_for_http_status(numeric if isinstance(numeric, int) else http_status)
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"upstream returned HTTP {http_status}"
    details = error.get("details")
    if not isinstance(details, list):
        details = []
    return UpstreamError(code, message, details_to_any(details))


def from_http_response(http_status: int, content_type: str, body: bytes) -> UpstreamError:
    """Map a non-2xx REST response to an UpstreamError."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deeply
        parsed = None
    # Some proxies answer with a JSON array holding the error object.
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if isinstance(parsed, dict):
        mapped = from_error_object(parsed.get("error"), http_status)
        if mapped is not None:
            return mapped
    snippet = body_snippet(body)
    code = code_for_http_status(http_status)
    if 500 <= http_status < 600 and code is grpc.StatusCode.INTERNAL:
        code = _UNREADABLE_5XX
    kind = content_type or "no content type"
    return UpstreamError(
        code,
        f"upstream returned HTTP {http_status} with a body that is not a Google error "
        f"({kind}): {snippet!r}",
    )


def size_text(size: int) -> str:
    """A byte size as a limit is told: in MiB (`16 MiB`, `0.5 MiB`), else in bytes."""
    mib = f"{size / (1024 * 1024):g}"
    return f"{mib} MiB" if "e" not in mib and len(mib) <= 6 else f"{size} bytes"


# Characters of an upstream body quoted in a message; redaction runs on a longer stretch
# first (SNIPPET_SCAN_CHARS), so a cut never leaves the start of a secret behind.
SNIPPET_CHARS = 200
SNIPPET_SCAN_CHARS = 4096


def body_snippet(body: bytes | str, limit: int = SNIPPET_CHARS) -> str:
    """The start of an upstream body as text, fit to quote: secrets redacted, then cut."""
    if isinstance(body, bytes):
        text = body[: SNIPPET_SCAN_CHARS * 4].decode("utf-8", "replace")
    else:
        text = body
    text = redaction.redact(text[:SNIPPET_SCAN_CHARS]).strip()
    return text[:limit]


def invalid_argument(message: str, field: str | None = None) -> UpstreamError:
    """An INVALID_ARGUMENT raised by the gateway itself, with a BadRequest naming the field."""
    if field is None:
        return UpstreamError(grpc.StatusCode.INVALID_ARGUMENT, message)
    return bad_request([(field, message)])


# The status message and the BadRequest both travel as gRPC trailers, which clients refuse
# past 8 KiB (soft) / 16 KiB (hard) by default, and the message is percent-encoded (a
# non-ASCII UTF-8 byte takes three): a long list keeps whole violations while they fit in
# this many UTF-8 bytes, then says how many it left out.
MAX_VIOLATIONS_BYTES = 1500


def bad_request(violations: list[tuple[str, str]]) -> UpstreamError:
    """INVALID_ARGUMENT listing each (field path, description) in a google.rpc.BadRequest."""
    kept: list[tuple[str, str]] = []
    size = 0
    for field, description in violations:
        size += len(field.encode()) + len(description.encode()) + 4
        if kept and size > MAX_VIOLATIONS_BYTES:
            break
        kept.append((field, description))
    if len(kept) < len(violations):
        kept.append(("", f"and {len(violations) - len(kept)} more violations, not listed"))
    violations = kept
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    message = "; ".join(f"{field}: {description}" for field, description in violations)
    return UpstreamError(grpc.StatusCode.INVALID_ARGUMENT, message, (packed,))


assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
