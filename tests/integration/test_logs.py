"""Request logs through a real gateway, the emulator and a real store (SQLite, PostgreSQL).

Every call is logged as the caller made it and as it ended (unary, streamed, failed, cut
short, cancelled; v1 and tuned models), with the figures of its usage event; media inputs
are skipped and counted; the LogService lists, filters, reads, deletes and tails them, and
switches logging at run time. Each test tags its calls with a `run` label of its own, so the
module's shared store answers for that test's calls only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import (
    logs_pb2,
    logs_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    content_pb2 as v1_content_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_generative_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2_grpc as v1_generative_service_pb2_grpc,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from tests.store.support import FreshUrl

MODEL = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
FULL = logs_pb2.LOG_VIEW_FULL
SETTINGS = "projects/-/loggingSettings"


@pytest.fixture(scope="module")
async def tuning_emulator() -> AsyncIterator[EmulatorHandle]:
    """An emulator whose tuning jobs finish at once (tuned-model calls)."""
    handle = await start_emulator(EmulatorSettings(tuning_seconds=0.0))
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def gateway(fresh_url: FreshUrl, tuning_emulator: EmulatorHandle) -> AsyncIterator[Gateway]:
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=tuning_emulator.url,
            port=0,
            store_url=await fresh_url(),
            logging_enabled=True,
            default_labels={"gateway": "gw-logs"},
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture
def logs(channel: grpc.aio.Channel) -> logs_pb2_grpc.LogServiceStub:
    return logs_pb2_grpc.LogServiceStub(channel)


async def flush(gateway: Gateway) -> None:
    assert gateway.recorder is not None
    await gateway.recorder.flush()


async def logs_of(
    gateway: Gateway,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
    extra: str = "",
    **fields: Any,
) -> list[logs_pb2.Log]:
    """The logs of the test's calls (newest first), FULL unless told otherwise."""
    await flush(gateway)
    condition = f'labels.run = "{run}"' + (f" AND ({extra})" if extra else "")
    fields.setdefault("view", FULL)
    answer = await logs.ListLogs(logs_pb2.ListLogsRequest(filter=condition, **fields))
    return list(answer.logs)


async def settings_of(
    logs: logs_pb2_grpc.LogServiceStub, **kwargs: Any
) -> logs_pb2.LoggingSettings:
    return await logs.GetLoggingSettings(
        logs_pb2.GetLoggingSettingsRequest(name=SETTINGS), **kwargs
    )


async def set_logging(
    logs: logs_pb2_grpc.LogServiceStub, *, name: str = SETTINGS, **fields: Any
) -> logs_pb2.LoggingSettings:
    return await logs.UpdateLoggingSettings(
        logs_pb2.UpdateLoggingSettingsRequest(
            settings=logs_pb2.LoggingSettings(name=name, **fields)
        )
    )


def ms(duration: duration_pb2.Duration) -> float:
    return duration.ToNanoseconds() / 1e6


def code_of(log: logs_pb2.Log) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == log.status.code)


def conversation(run: str) -> generative_service_pb2.GenerateContentRequest:
    """A request with every part a log must keep: turns, system instruction, tools, config."""
    request = text_request(
        MODEL,
        "Where is my refund for order 42?",
        {"run": run, "team": "billing"},
        system_instruction="You are a terse support agent.",
        generation_config=generative_service_pb2.GenerationConfig(
            temperature=0.5, max_output_tokens=256, stop_sequences=["END"]
        ),
    )
    last = list(request.contents)
    del request.contents[:]
    request.contents.extend(
        [
            content_pb2.Content(role="user", parts=[content_pb2.Part(text="Hello there")]),
            content_pb2.Content(role="model", parts=[content_pb2.Part(text="Hi, how can I help?")]),
            *last,
        ]
    )
    request.tools.add().function_declarations.add(
        name="lookup_order", description="Finds an order by its number."
    )
    return request


async def usage_tokens(channel: grpc.aio.Channel, run: str) -> usage_pb2.TokenCounts:
    answer = await usage_pb2_grpc.UsageServiceStub(channel).QueryUsage(
        usage_pb2.QueryUsageRequest(filter=f'labels.run = "{run}"')
    )
    return answer.totals.tokens


# --- what a call leaves ----------------------------------------------------------------


async def test_unary_call_is_logged_as_sent_and_answered(
    gateway: Gateway,
    channel: grpc.aio.Channel,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    sent = conversation(run)
    answer = await generative.GenerateContent(sent, metadata=(("x-goog-api-key", "secret-k"),))
    (log,) = await logs_of(gateway, logs, run)

    expected = generative_service_pb2.GenerateContentRequest()
    expected.CopyFrom(sent)
    expected.labels["gateway"] = "gw-logs"  # the defaults, merged as they went upstream
    assert log.request == expected
    assert log.response == answer
    assert log.name.startswith("projects/default/logs/") and len(log.name) == 46
    assert (log.model, log.method, log.api_version) == (MODEL, "GenerateContent", "v1beta")
    assert (log.caller, log.status.code, log.status.message) == ("anonymous", 0, "")
    assert dict(log.labels) == {"run": run, "team": "billing", "gateway": "gw-logs"}
    assert log.prompt_preview == "Where is my refund for order 42?"
    assert log.response_preview == response_text(answer).strip()[:200]
    assert not log.incomplete and not log.chunk_offsets
    assert not log.HasField("time_to_first_chunk") and ms(log.latency) > 0
    tokens = answer.usage_metadata
    assert (log.tokens.prompt, log.tokens.candidates, log.tokens.total) == (
        tokens.prompt_token_count,
        tokens.candidates_token_count,
        tokens.total_token_count,
    )
    assert log.tokens == await usage_tokens(channel, run)
    assert "secret-k" not in str(log)

    # GetLog reads the same log in full; BASIC leaves the pair out.
    assert await logs.GetLog(logs_pb2.GetLogRequest(name=log.name)) == log
    basic = await logs.GetLog(logs_pb2.GetLogRequest(name=log.name, view=logs_pb2.LOG_VIEW_BASIC))
    assert not basic.HasField("request") and not basic.HasField("response")
    assert basic.prompt_preview == log.prompt_preview
    listed = await logs_of(gateway, logs, run, view=logs_pb2.LOG_VIEW_UNSPECIFIED)
    assert listed == [basic]


async def test_streamed_call_is_logged_merged_with_chunk_offsets(
    gateway: Gateway,
    channel: grpc.aio.Channel,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    sent = text_request(MODEL, "a long story [[chunks:4]] [[chunk_delay_ms:20]]", {"run": run})
    chunks = [chunk async for chunk in generative.StreamGenerateContent(sent)]
    assert len(chunks) == 4
    (log,) = await logs_of(gateway, logs, run)

    assert log.method == "StreamGenerateContent"
    assert log.request.contents == sent.contents
    assert response_text(log.response) == "".join(response_text(chunk) for chunk in chunks)
    assert log.response.usage_metadata == chunks[-1].usage_metadata
    assert log.finish_reason == "STOP"
    offsets = [ms(offset) for offset in log.chunk_offsets]
    assert len(offsets) == 4 and offsets == sorted(offsets)
    assert offsets[-1] - offsets[0] >= 3 * 20 * 0.9  # the chunks' spacing shows
    assert ms(log.time_to_first_chunk) == pytest.approx(offsets[0], abs=0.001)  # kept to 1 µs
    assert ms(log.latency) >= offsets[-1]
    assert log.tokens == await usage_tokens(channel, run)
    assert log.tokens.total == chunks[-1].usage_metadata.total_token_count > 0


async def test_failed_call_is_logged_with_the_status_the_caller_got(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(text_request(MODEL, "[[fault:429]]", {"run": run}))
    (log,) = await logs_of(gateway, logs, run)
    assert code_of(log) == caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert log.status.message == caught.value.details()
    assert not log.HasField("response") and log.tokens.total == 0
    assert log.request.contents[0].parts[0].text == "[[fault:429]]"


async def test_cut_short_stream_is_logged_incomplete_with_what_arrived(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in generative.StreamGenerateContent(
            text_request(MODEL, "story [[chunks:5]] [[fault:disconnect]]", {"run": run})
        ):
            seen.append(chunk)
    (log,) = await logs_of(gateway, logs, run)
    assert code_of(log) == caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert log.status.message == caught.value.details()
    assert log.incomplete
    assert len(log.chunk_offsets) == len(seen) == 1
    assert response_text(log.response) == response_text(seen[0])


async def test_cancelled_stream_is_logged_cancelled(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    call = generative.StreamGenerateContent(
        text_request(MODEL, "story [[chunks:10]] [[chunk_delay_ms:200]]", {"run": run})
    )
    first = await call.read()
    call.cancel()
    found: list[logs_pb2.Log] = []
    for _ in range(100):  # the gateway notices the cancellation on its own time
        found = await logs_of(gateway, logs, run)
        if found:
            break
        await asyncio.sleep(0.05)
    (log,) = found
    assert code_of(log) == grpc.StatusCode.CANCELLED and log.incomplete
    assert response_text(log.response) == response_text(first)
    assert len(log.chunk_offsets) == 1


async def test_v1_calls_are_logged_with_their_version(
    gateway: Gateway,
    channel: grpc.aio.Channel,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    stub = v1_generative_service_pb2_grpc.GenerativeServiceStub(channel)
    sent = v1_generative_service_pb2.GenerateContentRequest(
        model=MODEL,
        contents=[v1_content_pb2.Content(role="user", parts=[v1_content_pb2.Part(text="hi v1")])],
        labels={"run": run},
    )
    answer = await stub.GenerateContent(sent)
    chunks = [chunk async for chunk in stub.StreamGenerateContent(sent)]
    stream_log, unary_log = await logs_of(gateway, logs, run)
    for log in (unary_log, stream_log):
        assert log.api_version == "v1"
        assert log.request.contents[0].parts[0].text == "hi v1"
    assert response_text(unary_log.response) == "".join(
        part.text for part in answer.candidates[0].content.parts
    )
    assert unary_log.tokens.total == answer.usage_metadata.total_token_count
    assert len(stream_log.chunk_offsets) == len(chunks)
    usage = await usage_tokens(channel, run)  # both calls
    for kind in ("prompt", "candidates", "thoughts", "total"):
        logged = getattr(unary_log.tokens, kind) + getattr(stream_log.tokens, kind)
        assert logged == getattr(usage, kind), kind


async def test_tuned_model_calls_are_logged(
    gateway: Gateway,
    channel: grpc.aio.Channel,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    operation = await model_service_pb2_grpc.ModelServiceStub(channel).CreateTunedModel(
        model_service_pb2.CreateTunedModelRequest(
            tuned_model_id=f"logged-{run}",
            tuned_model=tuned_model_pb2.TunedModel(
                base_model="models/gemini-1.5-flash-001-tuning",
                tuning_task=tuned_model_pb2.TuningTask(
                    training_data=tuned_model_pb2.Dataset(
                        examples=tuned_model_pb2.TuningExamples(
                            examples=[
                                tuned_model_pb2.TuningExample(text_input=str(n), output=str(n + 1))
                                for n in range(1, 6)
                            ]
                        )
                    )
                ),
            ),
        )
    )
    model = f"tunedModels/logged-{run}"
    assert operation.name.startswith(model)
    answer = await generative.GenerateContent(text_request(model, "3", {"run": run}))
    (log,) = await logs_of(gateway, logs, run)
    assert log.model == model and log.status.code == 0
    assert response_text(log.response) == response_text(answer)


def media(mime_type: str, run: str) -> generative_service_pb2.GenerateContentRequest:
    request = text_request(MODEL, "what is in this file?", {"run": run})
    request.contents[0].parts.add(inline_data=content_pb2.Blob(mime_type=mime_type, data=b"\0"))
    return request


async def test_video_gif_and_pdf_inputs_are_skipped_and_counted(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    await flush(gateway)
    before = (await settings_of(logs)).skipped_media_count
    await generative.GenerateContent(media("video/mp4", run))
    async for _ in generative.StreamGenerateContent(media("image/gif", run)):
        pass
    with_pdf = text_request(MODEL, "summarise", {"run": run}, system_instruction="Be brief.")
    with_pdf.system_instruction.parts.add(
        file_data=content_pb2.FileData(mime_type="application/pdf", file_uri="files/report")
    )
    await generative.GenerateContent(with_pdf)
    await generative.GenerateContent(media("image/png", run))  # pictures are logged
    (log,) = await logs_of(gateway, logs, run)
    assert log.request.contents[0].parts[1].inline_data.mime_type == "image/png"
    assert (await settings_of(logs)).skipped_media_count == before + 3


# --- settings at run time --------------------------------------------------------------


async def test_logging_switches_off_and_on_with_no_restart(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    off = await set_logging(logs, enabled=False)
    try:
        assert off.enabled is False and off.name == "projects/default/loggingSettings"
        assert off.HasField("update_time")
        await generative.GenerateContent(text_request(MODEL, "not logged", {"run": run}))
        async for _ in generative.StreamGenerateContent(
            text_request(MODEL, "not logged either", {"run": run})
        ):
            pass
        assert await logs_of(gateway, logs, run) == []
        assert (await settings_of(logs)).enabled is False
    finally:
        on = await set_logging(logs, enabled=True)
    assert on.enabled is True
    await generative.GenerateContent(text_request(MODEL, "logged again", {"run": run}))
    (log,) = await logs_of(gateway, logs, run)
    assert log.prompt_preview == "logged again"


async def test_settings_are_read_and_validated(logs: logs_pb2_grpc.LogServiceStub) -> None:
    current = await logs.GetLoggingSettings(
        logs_pb2.GetLoggingSettingsRequest(name="projects/default/loggingSettings")
    )
    assert current.name == "projects/default/loggingSettings"
    assert current.max_logs >= 1 and current.retention.seconds > 0
    assert current.at_limit in (logs_pb2.STOP_LOGGING, logs_pb2.EVICT_OLDEST)

    bad = {
        "max_logs 0": (logs_pb2.LoggingSettings(max_logs=0), ["max_logs"], "max_logs"),
        "max_logs huge": (logs_pb2.LoggingSettings(max_logs=2_000_000), [], "max_logs"),
        "no retention": (
            logs_pb2.LoggingSettings(retention=duration_pb2.Duration(seconds=0)),
            [],
            "retention",
        ),
        "negative retention": (
            logs_pb2.LoggingSettings(retention=duration_pb2.Duration(seconds=-5)),
            [],
            "retention",
        ),
        "unknown path": (logs_pb2.LoggingSettings(enabled=True), ["enabled", "colour"], "colour"),
        "output-only path": (logs_pb2.LoggingSettings(), ["log_count"], "log_count"),
        "nothing set": (logs_pb2.LoggingSettings(), [], "nothing to change"),
    }
    for case, (fields, paths, words) in bad.items():
        fields.name = SETTINGS
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await logs.UpdateLoggingSettings(
                logs_pb2.UpdateLoggingSettingsRequest(
                    settings=fields, update_mask=field_mask_pb2.FieldMask(paths=paths)
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert words in (caught.value.details() or ""), case
    for name in ("projects/default", "loggingSettings", "projects/default/loggingSettings/x"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await logs.GetLoggingSettings(logs_pb2.GetLoggingSettingsRequest(name=name))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await logs.GetLoggingSettings(
            logs_pb2.GetLoggingSettingsRequest(name="projects/other/loggingSettings")
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Unchanged by the refused updates.
    assert await settings_of(logs) == current


async def test_retention_changes_and_goes_back_to_the_default(
    logs: logs_pb2_grpc.LogServiceStub,
) -> None:
    default = await settings_of(logs)
    assert default.retention == duration_pb2.Duration(seconds=55 * 86_400)
    changed = await set_logging(logs, retention=duration_pb2.Duration(seconds=3600))
    assert changed.retention.seconds == 3600 and changed.enabled == default.enabled
    # Named in the mask but not set: back to the configured default.
    back = await logs.UpdateLoggingSettings(
        logs_pb2.UpdateLoggingSettingsRequest(
            settings=logs_pb2.LoggingSettings(name=SETTINGS),
            update_mask=field_mask_pb2.FieldMask(paths=["retention"]),
        )
    )
    assert back.retention == default.retention


# --- listing, reading, deleting --------------------------------------------------------


async def test_list_filters_and_pages_newest_first(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    await generative.GenerateContent(
        text_request(MODEL, "where is my refund", {"run": run, "team": "billing"})
    )
    await generative.GenerateContent(
        text_request(PRO, "weather today", {"run": run, "team": "ops"})
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await generative.GenerateContent(text_request(MODEL, "[[fault:500]]", {"run": run}))

    every = await logs_of(gateway, logs, run)
    assert [log.prompt_preview for log in every] == [
        "[[fault:500]]",
        "weather today",
        "where is my refund",
    ]
    filters = {
        f'model = "{PRO}"': ["weather today"],
        'labels.team = "billing"': ["where is my refund"],
        'status != "OK"': ["[[fault:500]]"],
        '"refund"': ["where is my refund"],
        'tokens.total > 0 AND method = "GenerateContent"': ["weather today", "where is my refund"],
        "latency < 0": [],
    }
    for condition, expected in filters.items():
        found = await logs_of(gateway, logs, run, condition)
        assert [log.prompt_preview for log in found] == expected, condition

    pages, token = [], ""
    while True:
        page = await logs.ListLogs(
            logs_pb2.ListLogsRequest(filter=f'labels.run = "{run}"', page_size=2, page_token=token)
        )
        pages.append([log.name for log in page.logs])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[every[0].name, every[1].name], [every[2].name]]

    for request, words in [
        (logs_pb2.ListLogsRequest(filter="model = "), "filter"),
        (logs_pb2.ListLogsRequest(filter="colour = 1"), "colour"),
        (logs_pb2.ListLogsRequest(page_size=-1), "page_size"),
        (logs_pb2.ListLogsRequest(page_token="not-a-token"), "token"),
        (logs_pb2.ListLogsRequest(parent="folders/x"), "parent"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await logs.ListLogs(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert words in str(caught.value.details()) + str(caught.value.trailing_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await logs.ListLogs(logs_pb2.ListLogsRequest(parent="projects/other"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_get_log_errors(logs: logs_pb2_grpc.LogServiceStub) -> None:
    missing = "projects/default/logs/" + "0" * 24
    cases = {
        missing: grpc.StatusCode.NOT_FOUND,
        "projects/-/logs/" + "0" * 24: grpc.StatusCode.NOT_FOUND,
        "projects/other/logs/" + "0" * 24: grpc.StatusCode.PERMISSION_DENIED,
        "projects/default/logs/xyz": grpc.StatusCode.INVALID_ARGUMENT,
        "logs/" + "0" * 24: grpc.StatusCode.INVALID_ARGUMENT,
        "": grpc.StatusCode.INVALID_ARGUMENT,
    }
    for name, code in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await logs.GetLog(logs_pb2.GetLogRequest(name=name))
        assert caught.value.code() == code, name


async def test_delete_by_names_and_by_filter(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    for word in ("one", "two", "three", "four"):
        await generative.GenerateContent(text_request(MODEL, word, {"run": run, "n": word}))
    four, three, two, one = await logs_of(gateway, logs, run)
    deleted = await logs.DeleteLogs(
        logs_pb2.DeleteLogsRequest(names=[one.name, three.name, "projects/-/logs/" + "0" * 24])
    )
    assert deleted.deleted_count == 2
    assert [log.name for log in await logs_of(gateway, logs, run)] == [four.name, two.name]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await logs.GetLog(logs_pb2.GetLogRequest(name=one.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    by_filter = await logs.DeleteLogs(
        logs_pb2.DeleteLogsRequest(filter=f'labels.run = "{run}" AND labels.n = "two"')
    )
    assert by_filter.deleted_count == 1
    assert [log.name for log in await logs_of(gateway, logs, run)] == [four.name]

    refused = {
        "no way": logs_pb2.DeleteLogsRequest(),
        "two ways": logs_pb2.DeleteLogsRequest(names=[four.name], all=True),
        "filter and names": logs_pb2.DeleteLogsRequest(names=[four.name], filter="model = 'x'"),
        "too many": logs_pb2.DeleteLogsRequest(names=[four.name] * 1001),
        "bad name": logs_pb2.DeleteLogsRequest(names=["projects/default/logs/nope"]),
        "bad filter": logs_pb2.DeleteLogsRequest(filter="model ="),
    }
    for case, request in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await logs.DeleteLogs(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await logs.DeleteLogs(
            logs_pb2.DeleteLogsRequest(names=[four.name.replace("default", "other")])
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [log.name for log in await logs_of(gateway, logs, run)] == [four.name]


# --- the live tail ---------------------------------------------------------------------


async def test_tail_sees_a_call_made_while_it_is_open(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    tail = logs.TailLogs(
        logs_pb2.TailLogsRequest(filter=f'labels.run = "{run}"'),
        metadata=(("x-request-id", f"tail-{run}"),),
    )
    # The tail follows the project from here on; its headers carry its request id.
    assert ("x-request-id", f"tail-{run}") in tuple(await tail.initial_metadata())
    try:
        await generative.GenerateContent(text_request(MODEL, "someone else's", {"run": "other"}))
        await generative.GenerateContent(text_request(MODEL, "first", {"run": run}))
        async for _ in generative.StreamGenerateContent(
            text_request(MODEL, "second [[chunks:2]]", {"run": run})
        ):
            pass
        await flush(gateway)
        first = await asyncio.wait_for(tail.read(), 10)
        second = await asyncio.wait_for(tail.read(), 10)
        assert [first.log.prompt_preview, second.log.prompt_preview] == [
            "first",
            "second [[chunks:2]]",
        ]
        assert second.log.method == "StreamGenerateContent"
        assert not first.log.HasField("request")  # BASIC by default
        assert first.log == (await logs_of(gateway, logs, run, view=logs_pb2.LOG_VIEW_BASIC))[1]
    finally:
        tail.cancel()
    assert tail.cancelled()


async def test_tail_in_full_view_ends_at_its_deadline(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
    run: str,
) -> None:
    tail = logs.TailLogs(
        logs_pb2.TailLogsRequest(parent="projects/-", filter=f'labels.run = "{run}"', view=FULL),
        timeout=2,
    )
    await tail.initial_metadata()
    answer = await generative.GenerateContent(text_request(MODEL, "in full", {"run": run}))
    await flush(gateway)
    received = await tail.read()
    assert received.log.response == answer
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tail.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_tail_refuses_a_bad_filter_at_once(logs: logs_pb2_grpc.LogServiceStub) -> None:
    tail = logs.TailLogs(logs_pb2.TailLogsRequest(filter="model ="), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tail.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
