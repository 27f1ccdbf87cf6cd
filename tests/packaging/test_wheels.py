"""What each distribution installs: one `gemini_gateway` namespace, split client / full."""

from __future__ import annotations

import re
from pathlib import Path

from tests.packaging.conftest import ROOT, wheel_files, wheel_metadata

GENERATED = ROOT / "generated"


def _top_levels(files: list[str]) -> set[str]:
    return {name.split("/", 1)[0] for name in files}


def _subpackages(files: list[str]) -> set[str]:
    return {name.split("/")[1] for name in files if name.count("/") >= 2}


def test_client_wheel_holds_only_stubs_and_client(client_wheel: Path) -> None:
    files = wheel_files(client_wheel)
    assert _top_levels(files) == {"gemini_gateway"}
    assert _subpackages(files) == {"client", "generated"}
    # A namespace package: the full distribution adds its own subpackages beside these.
    assert "gemini_gateway/__init__.py" not in files
    # No CLI in the slim distribution, although it lives in the client folder.
    assert not [name for name in files if name.startswith("gemini_gateway/client/cli")]
    v1beta = "gemini_gateway/generated/google/ai/generativelanguage/v1beta"
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi", ".proto"):
        assert f"{v1beta}/generative_service{suffix}" in files
    assert f"{v1beta}/generativelanguage_v1beta.yaml" in files
    assert "gemini_gateway/generated/py.typed" in files
    assert "gemini_gateway/client/py.typed" in files
    # Every generated file of the checkout ships (a new proto package cannot be forgotten).
    shipped = {name.removeprefix("gemini_gateway/generated/") for name in files}
    expected = {
        str(path.relative_to(GENERATED))
        for path in GENERATED.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert expected <= shipped, sorted(expected - shipped)


def test_full_wheel_holds_server_emulator_and_cli(full_wheel: Path) -> None:
    files = wheel_files(full_wheel)
    assert _top_levels(files) == {"gemini_gateway"}
    assert _subpackages(files) == {"server", "emulator", "cli", "console"}
    assert "gemini_gateway/server/app.py" in files
    assert "gemini_gateway/cli/main.py" in files
    assert "gemini_gateway/emulator/app.py" in files
    # Every module of the server tree ships, with its data files and migrations.
    server = ROOT / "server"
    expected = {
        "gemini_gateway/server/" + str(path.relative_to(server))
        for path in server.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert expected <= set(files), sorted(expected - set(files))
    assert "gemini_gateway/server/data/prices.toml" in files
    assert "gemini_gateway/server/store/migrations/versions/0001_usage.py" in files
    # The console's static files, beside server/ as server/console.py expects them.
    console = ROOT / "console"
    shipped = {
        "gemini_gateway/console/" + str(path.relative_to(console))
        for path in console.rglob("*")
        if path.is_file() and path.suffix in (".html", ".css", ".js", ".py")
    }
    assert "gemini_gateway/console/index.html" in shipped
    assert shipped <= set(files), sorted(shipped - set(files))


def _requirements(metadata: str) -> dict[str, str]:
    found = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            requirement = line.removeprefix("Requires-Dist:").strip()
            name = re.split(r"[<>=!~; ]", requirement, maxsplit=1)[0]
            found[name] = requirement
    return found


def _generated_floors() -> tuple[str, str]:
    """The grpcio and protobuf versions the committed generated code refuses to run below."""
    stub = (GENERATED / "gemini/gateway/v1/operations_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", stub)
    message = (GENERATED / "gemini/gateway/v1/operations_pb2.py").read_text()
    gencode = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", message
    )
    assert grpc_version and gencode
    return grpc_version.group(1), ".".join(gencode.groups())


def test_dependency_floors_match_generated_code(client_wheel: Path, full_wheel: Path) -> None:
    grpc_floor, protobuf_floor = _generated_floors()
    client = _requirements(wheel_metadata(client_wheel))
    assert set(client) == {"grpcio", "protobuf", "googleapis-common-protos", "grpcio-status"}
    full = _requirements(wheel_metadata(full_wheel))
    for requirements in (client, full):
        assert f">={grpc_floor}" in requirements["grpcio"]
        assert f">={protobuf_floor}" in requirements["protobuf"]
    assert full["gemini-grpc-gateway-client"] == "gemini-grpc-gateway-client==0.1.0"
    # Plotting and the alternative HTTP client are extras, not requirements.
    assert "matplotlib" not in full and "httpx" not in full
