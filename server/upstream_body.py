"""Reading what the upstream answered: JSON bodies and stream events, by the written rule.

A body that is not valid UTF-8, not JSON, or nested deeper than the parsers allow is the
upstream's fault: INTERNAL, with a message that starts "upstream sent" and quotes the start
of the body with its secrets redacted (errors.py holds the whole rule). Nothing here raises
ValueError or RecursionError to the caller, and no message names a Python class.
"""

from __future__ import annotations

import json

import grpc

from gemini_gateway.server import errors

# Nesting: Google's answers nest about a dozen levels. Python's JSON parser fails near 1000
# (the interpreter's recursion limit) with RecursionError, mapped here to INTERNAL; between
# 100 and that, protobuf's json_format refuses the message ("too deep"), which the caller of
# parse_upstream_json maps with does_not_fit.


def parse_upstream_json(payload: str | bytes, what: str) -> object:
    """The JSON value of an upstream body or stream event; UpstreamError INTERNAL if unusable.

    `what` names the payload for the message, e.g. "the HTTP 200 answer for GenerateContent".
    """
    if isinstance(payload, bytes | bytearray):
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise not_utf8(what, exc.start) from None
    else:
        text = payload
    try:
        return json.loads(text)
    except RecursionError:
        raise too_deep(what) from None
    except ValueError:
        raise not_json(what, text) from None


def not_utf8(what: str, offset: int) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.INTERNAL,
        f"upstream sent {what} that is not valid UTF-8 (invalid byte at offset {offset})",
    )


def not_json(what: str, text: str | bytes) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.INTERNAL,
        f"upstream sent {what} that is not valid JSON: {errors.body_snippet(text)!r}",
    )


def too_deep(what: str) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.INTERNAL,
        f"upstream sent {what} nested too deeply to read",
    )


def not_an_object(what: str) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.INTERNAL, f"upstream sent {what} that is not a JSON object"
    )


def does_not_fit(what: str, message_name: str, reason: str) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.INTERNAL, f"upstream sent {what} that does not fit {message_name}: {reason}"
    )
