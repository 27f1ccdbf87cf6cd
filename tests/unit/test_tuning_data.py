"""Tuning data without a server: example files, the TunedModel built from them, update masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemini_gateway.cli.tune import epoch_starts
from gemini_gateway.client.tuning import (
    DEFAULT_BASE_MODEL,
    TuningExample,
    build_tuned_model,
    build_update_request,
    load_examples,
    tuned_model_name,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import tuned_model_pb2

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
GOOD = '{"text_input": "a", "output": "1"}\n'


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def pairs(examples: list[TuningExample]) -> list[tuple[str, str]]:
    return [(e.text_input, e.output) for e in examples]


def test_seed_files_hold_the_same_increment_examples() -> None:
    from_jsonl = pairs(load_examples(EXAMPLES / "increment.jsonl"))
    from_csv = pairs(load_examples(EXAMPLES / "increment.csv"))
    assert from_jsonl == from_csv
    assert 14 <= len(from_jsonl) <= 20
    assert ("1", "2") in from_jsonl
    assert ("seven", "eight") in from_jsonl


def test_jsonl_accepts_every_input_key_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "data.jsonl",
        '{"text_input": "a", "output": "1"}\n'
        "\n"
        '{"textInput": "b", "output": "2"}\n'
        '{"input": "c", "output": "3", "note": "ignored"}\n',
    )
    assert pairs(load_examples(path)) == [("a", "1"), ("b", "2"), ("c", "3")]


def test_csv_with_input_output_header_and_quoted_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", 'input,output\n"hello, world",hi\n"two\nlines",x\n')
    assert pairs(load_examples(path)) == [("hello, world", "hi"), ("two\nlines", "x")]


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("text_input,output\nça,va\n".encode("utf-8-sig"))
    assert pairs(load_examples(path)) == [("ça", "va")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + '{"text_input": "b"}\n', "data.jsonl:2: missing output"),
        (GOOD + '\n{"text_input": "  ", "output": "x"}\n', "data.jsonl:3: text_input is empty"),
        (GOOD + "{not json}\n", "data.jsonl:2: bad JSON"),
        ('["a", "1"]\n', "data.jsonl:1: expected a JSON object"),
        ('{"prompt": "a", "output": "1"}\n', "data.jsonl:1: no input"),
        ('{"text_input": 3, "output": "1"}\n', "data.jsonl:1: text_input must be a string"),
        ('{"text_input": "a", "output": ""}\n', "data.jsonl:1: output is empty"),
    ],
)
def test_bad_jsonl_rows_name_their_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "data.jsonl", text)
    with pytest.raises(ValueError, match=message):
        load_examples(path)


def test_empty_input_message_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", '{"input": "", "output": "x"}\n')
    with pytest.raises(ValueError, match=r"data.jsonl:1: input is empty"):
        load_examples(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("text_input,output\na,1\nb,\n", "data.csv:3: output is empty"),
        ("text_input,output\na,1\nb\n", "data.csv:3: missing output"),
        ("text_input,output\n,1\n", "data.csv:2: text_input is empty"),
        ("text_input,output\na,1,extra\n", "data.csv:2: more fields"),
        ('text_input,output\n"multi\nline",1\nb,\n', "data.csv:4: output is empty"),
        ("prompt,answer\na,1\n", "data.csv:1: the header must name"),
    ],
)
def test_bad_csv_rows_name_their_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "data.csv", text)
    with pytest.raises(ValueError, match=message):
        load_examples(path)


def test_empty_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no examples"):
        load_examples(write(tmp_path, "empty.jsonl", "\n\n"))
    with pytest.raises(ValueError, match="no examples"):
        load_examples(write(tmp_path, "empty.csv", "input,output\n"))
    with pytest.raises(ValueError, match="unknown format"):
        load_examples(write(tmp_path, "data.txt", "a\tb\n"))


def test_build_tuned_model_sets_only_what_was_given() -> None:
    model = build_tuned_model([("1", "2"), TuningExample(text_input="x", output="y")], "Increment")
    assert model.display_name == "Increment"
    assert model.WhichOneof("source_model") == "base_model"
    assert model.base_model == DEFAULT_BASE_MODEL
    examples = model.tuning_task.training_data.examples.examples
    assert [(e.text_input, e.output) for e in examples] == [("1", "2"), ("x", "y")]
    assert model.tuning_task.training_data.WhichOneof("dataset") == "examples"
    hyperparameters = model.tuning_task.hyperparameters
    # Unset hyperparameters stay absent so the service applies its own defaults.
    assert not hyperparameters.HasField("epoch_count")
    assert not hyperparameters.HasField("batch_size")
    assert hyperparameters.WhichOneof("learning_rate_option") is None
    assert not model.HasField("temperature")


def test_build_tuned_model_hyperparameters_and_oneofs() -> None:
    model = build_tuned_model(
        [("a", "b")],
        "Further",
        description="more",
        epochs=3,
        batch_size=2,
        learning_rate_multiplier=0.5,
        source_model="increment-abc",
    )
    assert model.description == "more"
    assert model.WhichOneof("source_model") == "tuned_model_source"
    assert model.tuned_model_source.tuned_model == "tunedModels/increment-abc"
    assert model.base_model == ""
    hyperparameters = model.tuning_task.hyperparameters
    assert (hyperparameters.epoch_count, hyperparameters.batch_size) == (3, 2)
    assert hyperparameters.WhichOneof("learning_rate_option") == "learning_rate_multiplier"
    assert hyperparameters.learning_rate_multiplier == pytest.approx(0.5)

    rate = build_tuned_model([("a", "b")], "Rate", learning_rate=0.001).tuning_task
    assert rate.hyperparameters.WhichOneof("learning_rate_option") == "learning_rate"

    # Zero is a value the caller chose: it is sent (and the service rejects it).
    zero = build_tuned_model([("a", "b")], "Zero", epochs=0).tuning_task.hyperparameters
    assert zero.HasField("epoch_count")


def test_both_learning_rates_is_an_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        build_tuned_model([("a", "b")], "x", learning_rate=0.1, learning_rate_multiplier=2.0)


def test_update_mask_names_exactly_the_fields_given() -> None:
    request = build_update_request(
        "increment-abc", display_name="New", description=None, temperature=0.5, top_k=0
    )
    assert request.tuned_model.name == "tunedModels/increment-abc"
    assert list(request.update_mask.paths) == ["display_name", "temperature", "top_k"]
    assert request.tuned_model.display_name == "New"
    assert request.tuned_model.temperature == pytest.approx(0.5)
    # top_k=0 is an explicit value (optional field), not "unset".
    assert request.tuned_model.HasField("top_k")
    assert not request.tuned_model.HasField("top_p")


def test_update_repeated_field_and_errors() -> None:
    request = build_update_request("tunedModels/m", reader_project_numbers=[1, 2])
    assert list(request.tuned_model.reader_project_numbers) == [1, 2]
    assert list(request.update_mask.paths) == ["reader_project_numbers"]
    with pytest.raises(ValueError, match="nothing to update"):
        build_update_request("m", display_name=None)
    with pytest.raises(ValueError, match="no field 'colour'"):
        build_update_request("m", colour="red")


def test_names_accept_short_and_full_forms() -> None:
    assert tuned_model_name("increment-abc") == "tunedModels/increment-abc"
    assert tuned_model_name("tunedModels/increment-abc") == "tunedModels/increment-abc"


def test_epoch_starts_for_the_loss_plot() -> None:
    snapshots = [
        tuned_model_pb2.TuningSnapshot(step=step, epoch=epoch)
        for step, epoch in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]
    ]
    assert epoch_starts(snapshots) == [(3, 2), (5, 3)]
    assert epoch_starts([]) == []
