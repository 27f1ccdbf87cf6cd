"""Request logging on the call path: the policy layers, the media rule, and what a logged
call hands to the recorder (the same figures as its usage event)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    content_pb2 as v1_content_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_generative_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.config import ProjectConfig, ProjectLoggingConfig, Settings
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.log_event import LogEvent, LoggingPolicy, LogSkip, is_log_id
from gemini_gateway.server.metering import CallMeter, UsageMetrics
from gemini_gateway.server.recorder import UsageEvent
from gemini_gateway.server.request_log import (
    LogCapture,
    LoggedCallMeter,
    LoggingPolicies,
    has_unlogged_media,
)
from gemini_gateway.server.store import Store, open_store

DAY_S = 86_400.0
IDENTITY = Identity("p1", "alice")


class ListRecorder:
    """Keeps what is recorded, as the recorder's queue would."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


def settings(**fields: Any) -> Settings:
    return Settings(port=0, **fields)


def part(mime_type: str, *, file: bool = False) -> content_pb2.Part:
    if file:
        return content_pb2.Part(file_data=content_pb2.FileData(mime_type=mime_type, file_uri="f"))
    return content_pb2.Part(inline_data=content_pb2.Blob(mime_type=mime_type, data=b"x"))


def request(*parts: content_pb2.Part) -> generative_service_pb2.GenerateContentRequest:
    return generative_service_pb2.GenerateContentRequest(
        model="models/gemini-2.5-flash",
        contents=[
            content_pb2.Content(role="user", parts=[content_pb2.Part(text="first")]),
            content_pb2.Content(role="model", parts=[content_pb2.Part(text="answer")]),
            content_pb2.Content(role="user", parts=[content_pb2.Part(text="look"), *parts]),
        ],
    )


# --- policies --------------------------------------------------------------------------


def test_policy_layers_gateway_then_project_configuration() -> None:
    policies = LoggingPolicies(
        settings(
            logging_enabled=False,
            log_max_logs=1000,
            log_retention_days=55,
            log_at_limit="stop_logging",
            projects={
                "a": ProjectConfig(logging=ProjectLoggingConfig(enabled=True, max_logs=5)),
                "b": ProjectConfig(logging=ProjectLoggingConfig(retention_days=1)),
                "c": ProjectConfig(logging=ProjectLoggingConfig(at_limit="evict_oldest")),
            },
        ),
        store=None,  # type: ignore[arg-type]  # never read before start()/refresh()
    )
    assert policies.policy_for("a") == LoggingPolicy(True, 5, 55 * DAY_S, "stop_logging")
    assert policies.policy_for("b") == LoggingPolicy(False, 1000, DAY_S, "stop_logging")
    assert policies.policy_for("c") == LoggingPolicy(False, 1000, 55 * DAY_S, "evict_oldest")
    assert policies.policy_for("unknown") == LoggingPolicy(False, 1000, 55 * DAY_S, "stop_logging")


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    yield store
    await store.close()


async def test_store_overrides_win_and_reach_other_replicas_on_refresh(store: Store) -> None:
    config = settings(
        logging_enabled=False,
        projects={"a": ProjectConfig(logging=ProjectLoggingConfig(max_logs=5))},
    )
    here, there = LoggingPolicies(config, store), LoggingPolicies(config, store)
    await here.refresh()
    await there.refresh()
    record = await here.update("a", {"enabled": True, "at_limit": "evict_oldest"})
    assert record.enabled is True
    # This replica follows at once; the other one on its next refresh.
    assert here.policy_for("a") == LoggingPolicy(True, 5, 55 * DAY_S, "evict_oldest")
    assert there.policy_for("a").enabled is False
    await there.refresh()
    assert there.policy_for("a") == here.policy_for("a")
    # An override of an unconfigured project lies over the gateway-wide settings.
    await here.update("new", {"retention_s": 60.0})
    await there.refresh()
    assert there.policy_for("new") == LoggingPolicy(False, 1000, 60.0, "stop_logging")
    # Back to the configured default.
    await here.update("a", {"enabled": None, "at_limit": None})
    await there.refresh()
    assert there.policy_for("a") == LoggingPolicy(False, 5, 55 * DAY_S, "stop_logging")


async def test_failing_store_keeps_last_policies_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gw.db"
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    try:
        policies = LoggingPolicies(settings(), store)
        await policies.update("a", {"enabled": True})
        await store.engine.dispose()
        path.unlink()  # the next connection finds an empty database: no tables
        with caplog.at_level(logging.WARNING, logger="gemini_gateway.server.request_log"):
            await policies.start()  # start does not fail either
            for _ in range(3):
                await policies._refresh_quietly()
            await policies.stop()
        assert policies.policy_for("a").enabled is True
        warnings = [r for r in caplog.records if "logging settings" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await store.close()


# --- the media rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "skipped"),
    [
        ((), False),
        ((part("image/png"),), False),
        ((part("image/jpeg", file=True), part("audio/mp3")), False),
        ((part("text/plain"),), False),
        ((part("video/mp4"),), True),
        ((part("video/webm", file=True),), True),
        ((part("image/gif"),), True),
        ((part("image/gif", file=True),), True),
        ((part("application/pdf"),), True),
        ((part("Application/PDF; charset=binary", file=True),), True),
        ((part("image/png"), part("video/quicktime")), True),
    ],
    ids=[
        "text only", "png", "jpeg file and audio", "text/plain", "inline video", "video file",
        "inline gif", "gif file", "inline pdf", "pdf file with parameters", "video after png",
    ],
)  # fmt: skip
def test_video_gif_and_pdf_inputs_are_not_logged(
    parts: tuple[content_pb2.Part, ...], skipped: bool
) -> None:
    assert has_unlogged_media(request(*parts)) is skipped


def test_media_anywhere_in_the_request_counts() -> None:
    earlier_turn = request()
    earlier_turn.contents[0].parts.append(part("application/pdf"))
    assert has_unlogged_media(earlier_turn)
    in_system_instruction = request()
    in_system_instruction.system_instruction.parts.append(part("video/mp4", file=True))
    assert has_unlogged_media(in_system_instruction)
    in_function_response = request(
        content_pb2.Part(
            function_response=content_pb2.FunctionResponse(
                name="fetch",
                parts=[
                    content_pb2.FunctionResponsePart(
                        inline_data=content_pb2.FunctionResponseBlob(
                            mime_type="application/pdf", data=b"%PDF"
                        )
                    )
                ],
            )
        )
    )
    assert has_unlogged_media(in_function_response)
    v1 = v1_generative_service_pb2.GenerateContentRequest(
        model="models/gemini-2.5-flash",
        contents=[
            v1_content_pb2.Content(
                parts=[v1_content_pb2.Part(inline_data=v1_content_pb2.Blob(mime_type="image/gif"))]
            )
        ],
    )
    assert has_unlogged_media(v1)


# --- capture ---------------------------------------------------------------------------


def capture(enabled: bool) -> tuple[LogCapture, ListRecorder]:
    recorder = ListRecorder()
    policies = LoggingPolicies(settings(logging_enabled=enabled), store=None)  # type: ignore[arg-type]
    return LogCapture(recorder, policies), recorder  # type: ignore[arg-type]


def meter(
    log_capture: LogCapture,
    recorder: ListRecorder,
    message: Any,
    *,
    streaming: bool = False,
) -> CallMeter:
    return log_capture.meter(
        recorder,  # type: ignore[arg-type]
        UsageMetrics(()),
        IDENTITY,
        message,
        {"team": "search"},
        "StreamGenerateContent" if streaming else "GenerateContent",
        streaming,
    )


def chunk(text: str, total: int | None = None) -> generative_service_pb2.GenerateContentResponse:
    response = generative_service_pb2.GenerateContentResponse()
    response.candidates.add().content.parts.add(text=text)
    if total is not None:
        response.usage_metadata.prompt_token_count = 3
        response.usage_metadata.candidates_token_count = total - 3
        response.usage_metadata.thoughts_token_count = 1
        response.usage_metadata.total_token_count = total
    return response


def test_logging_off_meters_only() -> None:
    log_capture, recorder = capture(enabled=False)
    call = meter(log_capture, recorder, request(part("video/mp4")))
    assert type(call) is CallMeter
    call.response(chunk("hi", 7))
    call.finish(None)
    assert [type(event) for event in recorder.events] == [UsageEvent]


def test_media_input_is_skipped_and_counted() -> None:
    log_capture, recorder = capture(enabled=True)
    call = meter(log_capture, recorder, request(part("image/gif")))
    assert type(call) is CallMeter
    call.finish(None)
    assert recorder.of(LogSkip) == [LogSkip("p1", "media")]
    assert recorder.of(LogEvent) == []


def same_figures(log: LogEvent, usage: UsageEvent) -> None:
    for name in (
        "project", "caller", "model", "method", "labels", "status", "prompt_tokens",
        "candidates_tokens", "cached_tokens", "thoughts_tokens", "tool_use_tokens",
        "total_tokens", "latency_ms", "first_chunk_ms", "incomplete",
    ):  # fmt: skip
        assert getattr(log, name) == getattr(usage, name), name


def test_unary_call_is_logged_with_its_usage_figures() -> None:
    log_capture, recorder = capture(enabled=True)
    sent = request(part("image/png"))
    call = meter(log_capture, recorder, sent)
    assert isinstance(call, LoggedCallMeter)
    answer = chunk("hello", 9)
    call.response(answer)
    call.finish(None)
    (usage,) = recorder.of(UsageEvent)
    (log,) = recorder.of(LogEvent)
    same_figures(log, usage)
    assert is_log_id(log.id)
    assert log.request is sent and list(log.responses) == [answer]
    assert log.chunk_offsets_ms == [] and log.first_chunk_ms is None
    assert (log.status, log.error_message, log.api_version) == ("OK", "", "v1beta")
    assert log.total_tokens == 9 and log.labels == {"team": "search"}
    assert log.create_time <= usage.time


def test_stream_keeps_each_chunk_and_its_offset() -> None:
    log_capture, recorder = capture(enabled=True)
    call = meter(log_capture, recorder, request(), streaming=True)
    chunks = [chunk("a"), chunk("b"), chunk("c", 12)]
    for message in chunks:
        call.response(message)
    call.finish(None)
    (usage,) = recorder.of(UsageEvent)
    (log,) = recorder.of(LogEvent)
    same_figures(log, usage)
    assert list(log.responses) == chunks
    offsets = list(log.chunk_offsets_ms)
    assert len(offsets) == 3 and offsets == sorted(offsets)
    assert log.first_chunk_ms == offsets[0]
    assert offsets[-1] <= log.latency_ms
    assert log.total_tokens == 12 and not log.incomplete


def test_failed_and_cut_short_calls_say_what_the_caller_saw() -> None:
    log_capture, recorder = capture(enabled=True)
    call = meter(log_capture, recorder, request(), streaming=True)
    call.response(chunk("a"))
    call.finish(errors.UpstreamError(grpc.StatusCode.UNAVAILABLE, "upstream went away"))
    (log,) = recorder.of(LogEvent)
    assert (log.status, log.error_message, log.incomplete) == (
        "UNAVAILABLE",
        "upstream went away",
        True,
    )
    assert len(log.responses) == 1

    cancelled = meter(log_capture, recorder, request(), streaming=True)
    cancelled.finish(asyncio.CancelledError())
    log = recorder.of(LogEvent)[-1]
    assert (log.status, log.error_message, log.incomplete) == ("CANCELLED", "", True)


def test_v1_calls_say_their_api_version() -> None:
    log_capture, recorder = capture(enabled=True)
    v1 = v1_generative_service_pb2.GenerateContentRequest(model="models/gemini-2.5-flash")
    call = meter(log_capture, recorder, v1)
    call.finish(None)
    (log,) = recorder.of(LogEvent)
    assert log.api_version == "v1"
