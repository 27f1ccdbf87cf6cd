"""Vertex AI's label rules on the emulator's Vertex paths; the Gemini paths do not check."""

from __future__ import annotations

from typing import Any

import pytest

from gemini_gateway.emulator.labels import MAX_LABELS, label_problems
from tests.emulator.conftest import GENERATE, Api, user

VERTEX = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def many(count: int) -> dict[str, str]:
    return {f"k{index}": "v" for index in range(count)}


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"team": "search", "env": ""},  # values may be empty
        {"k" * 63: "v" * 63},
        many(MAX_LABELS),
        {"équipe": "données", "straße": "ß", "команда": "поиск"},  # lowercase letters (Ll)
        {"タグ": "検索", "部门": "研发"},  # letters without case (Lo)
        {"a_b-c9": "0-9_x", "x": "٣"},  # digits of any script (Nd)
    ],
)
def test_labels_vertex_accepts(labels: dict[str, str]) -> None:
    assert label_problems(labels) == []


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"k" * 64: "v"}, "is 64 characters long; at most 63 allowed"),
        ({"k": "v" * 64}, "is 64 characters long; at most 63 allowed"),
        (many(MAX_LABELS + 1), "at most 64 labels are allowed; got 65"),
        ({"": "v"}, "label keys must not be empty"),
        ({"Team": "x"}, "label key 'Team' contains 'T'"),
        ({"team": "Search"}, "label value 'Search' contains 'S'"),
        ({"ÉQUIPE": "x"}, "contains 'É', 'Q', 'U', 'I', 'P', ...;"),
        ({"チーム": "x"}, "contains 'ー'"),  # the prolonged sound mark is Lm, not Lo
        ({"1team": "x"}, "must start with a lowercase letter or an international character"),
        ({"_team": "x"}, "must start with a lowercase letter or an international character"),
        ({"a.b": "x"}, "contains '.'"),
        ({"a b": "x"}, "contains ' '"),
        ({"ʰa": "x"}, "contains 'ʰ'"),  # a modifier letter (Lm)
        ({"e\u0301": "x"}, "contains '\u0301'"),  # a combining accent (Mn): not composed é
        ({"k": 5}, "the value of label 'k' must be a string"),
        (["k", "v"], "labels must be an object"),
    ],
)
def test_labels_vertex_refuses(labels: Any, problem: str) -> None:
    assert any(problem in text for text in label_problems(labels)), label_problems(labels)


def test_one_problem_per_fault_and_long_text_is_cut() -> None:
    assert label_problems({"Team": "x"}) == [
        "label key 'Team' contains 'T'; only lowercase letters, numeric characters, "
        "underscores, dashes and international characters are allowed"
    ]
    (problem,) = label_problems({"k" * 5000: "v"})
    assert problem.startswith("label key '" + "k" * 30 + "...' is 5000 characters long")


async def test_vertex_path_refuses_bad_labels_with_bad_request(api: Api) -> None:
    body = user("hi") | {"labels": {"Team": "x", "ok": "fine", "k": "v" * 64}}
    for suffix in (":generateContent", ":streamGenerateContent?alt=sse"):
        status, data, _ = await api.post(VERTEX + suffix, body)
        assert status == 400
        error = data["error"]
        assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
        (detail,) = error["details"]
        assert detail["@type"] == BAD_REQUEST
        violations = detail["fieldViolations"]
        assert [violation["field"] for violation in violations] == ["labels", "labels"]
        assert "'Team'" in violations[0]["description"]
        assert "64 characters long" in violations[1]["description"]
        assert error["message"].startswith("* GenerateContentRequest.labels: label key 'Team'")


async def test_vertex_path_boundaries(api: Api) -> None:
    path = VERTEX + ":generateContent"
    assert (await api.post(path, user("hi") | {"labels": many(64)}))[0] == 200
    assert (await api.post(path, user("hi") | {"labels": many(65)}))[0] == 400
    assert (await api.post(path, user("hi") | {"labels": {"k" * 63: "v" * 63}}))[0] == 200
    assert (await api.post(path, user("hi") | {"labels": {"k" * 64: "v"}}))[0] == 400


async def test_gemini_paths_take_any_labels(api: Api) -> None:
    status, _, _ = await api.post(GENERATE, user("hi") | {"labels": {"Team": "X" * 100}})
    assert status == 200


async def test_request_log_shows_labels_as_received(api: Api) -> None:
    labels = {"équipe": "données", "チーム": "", "Bad": "Kept"}
    await api.post(GENERATE, user("hi") | {"labels": labels})
    await api.post(VERTEX + ":generateContent", user("hi") | {"labels": labels})  # refused
    await api.post(VERTEX + ":countTokens", user("hi"))
    _, log, _ = await api.get("/_emulator/requests")
    assert [entry["labels"] for entry in log] == [labels, labels, None]
    assert list(log[0]["labels"]) == list(labels)  # order kept too
