"""JSON log lines: one object per line, the call's request id, trace ids, secrets redacted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from gemini_gateway.server import log_format, redaction

SECRET = "AIzaSyLogFormatTestKey0123456789abcdefghi"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    logger = logging.getLogger("gemini_gateway.tests.log_format")
    handler = log_format.make_handler("json", out, fields={"worker": 2})
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_one_object_per_line(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    logger.info("first %s", "line")
    logger.warning('second\nline with "quotes" and é')
    first, second = _lines(out)
    assert first["message"] == "first line" and first["level"] == "INFO"
    assert first["logger"] == "gemini_gateway.tests.log_format"
    assert str(first["time"]).endswith("Z") and "T" in str(first["time"])
    assert first["worker"] == 2
    assert "request_id" not in first and "trace_id" not in first
    assert second["message"] == 'second\nline with "quotes" and é'


def test_exceptions_and_secrets(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    redaction.SECRETS.add(SECRET)
    try:
        raise ValueError(f"upstream said key={SECRET}")
    except ValueError:
        logger.exception("failed with %s", SECRET)
    (line,) = _lines(out)
    assert SECRET not in out.getvalue()
    assert "[REDACTED]" in str(line["message"])
    assert "ValueError" in str(line["exception"])


async def test_request_id_follows_the_call(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged

    async def call(metadata: tuple[tuple[str, str], ...]) -> str:
        request_id = log_format.request_id_from(metadata)
        log_format._REQUEST_ID.set(request_id)  # as RequestIdInterceptor does, in the call's task
        await asyncio.sleep(0)
        logger.info("serving")
        await asyncio.sleep(0)
        logger.info("done")
        return request_id

    given, generated = await asyncio.gather(
        asyncio.create_task(call((("x-request-id", "abc-123"),))),
        asyncio.create_task(call((("x-request-id", "bad id\n"),))),
    )
    assert given == "abc-123" and len(generated) == 32
    ids = [line["request_id"] for line in _lines(out)]
    assert sorted(ids) == sorted([given, given, generated, generated])
    assert log_format.current_request_id() is None  # nothing leaks out of the calls' tasks


def test_plausible_request_ids() -> None:
    assert log_format.request_id_from((("x-request-id", "req_1.2:3/4+5=6-7"),)) == (
        "req_1.2:3/4+5=6-7"
    )
    for bad in ("", "a" * 129, "with space", "semi;colon", 'quote"'):
        assert log_format.request_id_from((("x-request-id", bad),)) != bad
    assert log_format.request_id_from((("other", "x"),)) != "x"


def test_trace_ids_of_the_current_span(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.info("inside")
    (line,) = _lines(out)
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_configure_logging_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        log_format.configure_logging("info", "json")
        logging.getLogger("gemini_gateway.tests").info("as json")
        log_format.configure_logging("info", "text")
        logging.getLogger("gemini_gateway.tests").info("as text")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    as_json, as_text = capsys.readouterr().err.splitlines()
    assert json.loads(as_json)["message"] == "as json"
    assert as_text.endswith("INFO gemini_gateway.tests: as text")
