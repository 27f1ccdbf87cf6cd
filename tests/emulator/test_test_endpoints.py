"""/_emulator/requests and /_emulator/stats, including cancellation by a departing client."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.emulator.conftest import GENERATE, STREAM_SSE, Api, user


async def wait_for_stats(api: Api, **expected: int) -> dict[str, Any]:
    for _ in range(100):
        _, stats, _ = await api.get("/_emulator/stats")
        if all(stats[k] == v for k, v in expected.items()):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"stats never reached {expected}: {stats}")


async def test_request_log(api: Api) -> None:
    await api.post(GENERATE + "?foo=bar", user("logged"), headers={"X-Goog-Api-Key": "k"})
    await api.get("/v1/models")
    status, log, _ = await api.get("/_emulator/requests")
    assert status == 200
    first, second = log
    assert first["method"] == "POST"
    assert first["path"] == GENERATE
    assert first["query"] == {"foo": "bar"}
    assert first["headers"]["x-goog-api-key"] == "k"
    assert first["body"] == user("logged")
    assert isinstance(first["started_at"], float)
    assert second["method"] == "GET" and second["body"] is None
    status, _, _ = await api.call("DELETE", "/_emulator/requests")
    assert status == 200
    _, log, _ = await api.get("/_emulator/requests")
    assert log == []


async def test_request_log_is_bounded(api: Api) -> None:
    await asyncio.gather(*(api.get("/v1beta/models") for _ in range(210)))
    _, log, _ = await api.get("/_emulator/requests")
    assert len(log) == 200


async def test_stats_count_completed_requests(api: Api) -> None:
    await api.post(GENERATE, user("a"))
    await api.post(GENERATE, {"contents": []})  # an error reply is still a completed request
    await api.post(STREAM_SSE, user("b"))
    stats = await wait_for_stats(api, completed=3)
    assert stats == {"started": 3, "completed": 3, "cancelled": 0, "aborted": 0, "open": 0}


async def test_client_disconnect_mid_stream_cancels_handler(api: Api) -> None:
    body = user("long [[chunks:20]] [[chunk_delay_ms:100]]")
    resp = await api.session.post(api.url(STREAM_SSE), json=body)
    first = await resp.content.readuntil(b"\r\n\r\n")
    assert first.startswith(b"data: ")
    _, stats, _ = await api.get("/_emulator/stats")
    assert stats["open"] == 1
    resp.close()  # drops the connection while the emulator is still streaming
    stats = await wait_for_stats(api, cancelled=1, open=0)
    assert stats["completed"] == 0  # /_emulator/ calls are not counted


async def test_client_gives_up_while_waiting_for_headers(api: Api) -> None:
    body = user("slow [[fault:headers_delay:5000]]")
    request = asyncio.create_task(api.session.post(api.url(GENERATE), json=body))
    await wait_for_stats(api, open=1)
    request.cancel()
    await wait_for_stats(api, cancelled=1, open=0)


async def test_reset_stats(api: Api) -> None:
    await api.get("/v1beta/models")
    status, stats, _ = await api.call("DELETE", "/_emulator/stats")
    assert status == 200
    assert stats["started"] == 0
