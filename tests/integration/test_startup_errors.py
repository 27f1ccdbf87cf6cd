"""What a new user gets wrong first: each start-up or CLI error is one or two lines naming the
fix, with a non-zero exit status and no traceback (unless --debug).

Every case runs the real command in a subprocess, on loopback only, in an empty folder with
its own store, and no gateway.toml unless the case writes one.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gemini_gateway.server import startup
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.startup import StartupError

CLI = [sys.executable, "-m", "gemini_gateway.cli"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment minus the user's gateway, Google and debug settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GEMINI_GATEWAY_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_"))
    }
    env.update(
        GEMINI_GATEWAY_STORE_URL=f"sqlite+aiosqlite:///{folder / 'store' / 'gateway.db'}",
        COLUMNS="60",  # narrow: a message must not be wrapped
        CLOUDSDK_CONFIG=str(folder / "gcloud"),
        NO_GCE_CHECK="true",  # google-auth: do not look for a metadata server
        GCE_METADATA_HOST="127.0.0.1:1",
        GCE_METADATA_IP="127.0.0.1:1",
    )
    env.update(extra)
    return env


def run(folder: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=folder,
        env=_env(folder, **env),
    )


def error(result: subprocess.CompletedProcess, status: int = 1) -> list[str]:
    """The error's lines: stderr is `error: ...` and at most one more line, nothing else."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Unclosed" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert all(line.startswith("  ") for line in lines[1:]), result.stderr
    return lines


# --- the gRPC port ----------------------------------------------------------------------------


def test_port_in_use_names_it_and_how_to_pick_another(tmp_path: Path, busy_port: int) -> None:
    first, hint = error(run(tmp_path, "serve", "--port", str(busy_port)))
    assert first == (
        f"error: the gateway cannot listen on 127.0.0.1:{busy_port}: the address is already in use"
    )
    assert hint == "  pick another port: --port N, PORT=N make serve, or --port 0 for any free port"


def test_port_in_use_from_the_environment(tmp_path: Path, busy_port: int) -> None:
    first, _hint = error(run(tmp_path, "serve", GEMINI_GATEWAY_PORT=str(busy_port)))
    assert f"127.0.0.1:{busy_port}" in first


def test_port_out_of_range(tmp_path: Path) -> None:
    first, hint = error(run(tmp_path, "serve", "--port", "70000"))
    assert first == "error: the gateway cannot listen on port 70000: ports go from 0 to 65535"
    assert "--port 0" in hint


def test_host_that_is_not_an_address_here(tmp_path: Path) -> None:
    first, hint = error(run(tmp_path, "serve", "--host", "host.invalid", "--port", "0"))
    assert "host 'host.invalid' does not resolve" in first
    assert "--host" in hint


def test_debug_shows_the_traceback(tmp_path: Path, busy_port: int) -> None:
    for args, env in (
        (["--debug", "serve", "--port", str(busy_port)], {}),
        (["serve", "--port", str(busy_port)], {"GEMINI_GATEWAY_DEBUG": "1"}),
    ):
        result = run(tmp_path, *args, **env)
        assert result.returncode != 0
        assert "Traceback" in result.stderr
        assert "StartupError" in result.stderr and "already in use" in result.stderr


async def test_failed_bind_closes_what_start_gateway_opened(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, busy_port: int
) -> None:
    """The probe skipped, gRPC itself fails to bind: store, recorder, emulator and upstream
    client are closed, and nothing is reported unclosed."""
    from gemini_gateway.emulator.runner import EmulatorHandle
    from gemini_gateway.server.recorder import Recorder
    from gemini_gateway.server.store import Store
    from gemini_gateway.server.upstream import UpstreamClient

    closed: list[str] = []

    def spy(cls: type, name: str) -> None:
        original = getattr(cls, name)

        async def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
            closed.append(cls.__name__)
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, recorded)

    for cls, name in (
        (Store, "close"),
        (Recorder, "stop"),
        (EmulatorHandle, "close"),
        (UpstreamClient, "aclose"),
    ):
        spy(cls, name)
    monkeypatch.setattr(startup, "check_port", lambda *args, **kwargs: None)
    problems: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    try:
        settings = Settings(
            upstream="emulator",
            port=busy_port,
            store_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        )
        with pytest.raises(StartupError, match=f"127.0.0.1:{busy_port}.*already in use"):
            await start_gateway(settings)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert sorted(closed) == ["EmulatorHandle", "Recorder", "Store", "UpstreamClient"]
    assert problems == []


# --- other ports ------------------------------------------------------------------------------


def test_metrics_port_in_use(tmp_path: Path, busy_port: int) -> None:
    first, hint = error(run(tmp_path, "serve", "--port", "0", "--metrics-port", str(busy_port)))
    assert first == (
        f"error: the metrics server cannot listen on 127.0.0.1:{busy_port}: "
        "the address is already in use"
    )
    assert hint == "  pick another port: --metrics-port N, or --metrics-port 0 for any free port"


def test_emulator_port_in_use(tmp_path: Path, busy_port: int) -> None:
    first, hint = error(run(tmp_path, "emulator", "--port", str(busy_port)))
    assert f"the emulator cannot listen on 127.0.0.1:{busy_port}" in first
    assert "--port 0" in hint


# --- Vertex AI --------------------------------------------------------------------------------


def test_vertex_without_credentials(tmp_path: Path) -> None:
    first, hint = error(run(tmp_path, "serve", "--vertex", "--port", "0"))
    assert first == (
        "error: the vertex upstream (--vertex) needs Google credentials and found none"
    )
    assert "gcloud auth application-default login" in hint
    assert "GOOGLE_APPLICATION_CREDENTIALS" in hint
    assert "needs a project: GEMINI_GATEWAY_VERTEX_PROJECT=my-project" in hint


def test_vertex_with_a_missing_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "key.json"
    first, hint = error(
        run(
            tmp_path,
            "serve",
            "--vertex",
            "--port",
            "0",
            GOOGLE_APPLICATION_CREDENTIALS=str(missing),
            GEMINI_GATEWAY_VERTEX_PROJECT="my-project",
        )
    )
    assert f"cannot use GOOGLE_APPLICATION_CREDENTIALS={missing}" in first
    assert "gcloud auth application-default login" in hint
    assert "project" not in hint  # given


def test_vertex_credentials_without_a_project(tmp_path: Path) -> None:
    key = tmp_path / "adc.json"
    key.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "id",
                "client_secret": "secret",
                "refresh_token": "token",
            }
        )
    )
    first, hint = error(
        run(tmp_path, "serve", "--vertex", "--port", "0", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    )
    assert "needs a Google Cloud project" in first
    assert "GEMINI_GATEWAY_VERTEX_PROJECT=my-project" in hint


# --- settings ---------------------------------------------------------------------------------


def test_bad_port_in_the_environment(tmp_path: Path) -> None:
    (line,) = error(run(tmp_path, "serve", GEMINI_GATEWAY_PORT="abc"), status=2)
    assert line == (
        "error: bad setting port = 'abc' (from GEMINI_GATEWAY_PORT): expected an integer"
    )


def test_bad_http_client_option(tmp_path: Path) -> None:
    (line,) = error(run(tmp_path, "serve", "--http-client", "requests"), status=2)
    assert line == (
        "error: bad setting http_client = 'requests' (from --http-client): use 'aiohttp' or 'httpx'"
    )


def test_bad_value_in_gateway_toml(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text('upstream = "gemni"\n')
    (line,) = error(run(tmp_path, "serve", "--port", "0"), status=2)
    assert line == (
        "error: bad setting upstream = 'gemni' (from gateway.toml): "
        "use 'emulator', 'gemini' or 'vertex'"
    )


def test_bad_nested_value_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('[[projects.search.callers]]\nname = "frontend"\n')
    (line,) = error(
        run(tmp_path, "serve", "--port", "0", GEMINI_GATEWAY_CONFIG=str(config)), status=2
    )
    assert line == (
        f"error: bad setting projects.search.callers[0] (from {config}): "
        "caller 'frontend' needs token_sha256 or tls_subject"
    )


def test_config_file_that_is_not_toml(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("port = [\n")
    first, hint = error(run(tmp_path, "serve", "--port", "0"), status=2)
    assert first.startswith("error: gateway.toml: not valid TOML: ")
    assert "GEMINI_GATEWAY_CONFIG" in hint


def test_list_setting_that_is_not_json(tmp_path: Path) -> None:
    (line,) = error(run(tmp_path, "serve", GEMINI_GATEWAY_METRICS_LABEL_KEYS="team"), status=2)
    assert line == (
        "error: bad setting metrics_label_keys (from GEMINI_GATEWAY_METRICS_LABEL_KEYS): "
        """expected JSON, e.g. '["team"]'"""
    )


def test_bad_log_level(tmp_path: Path) -> None:
    (line,) = error(run(tmp_path, "serve", "--log-level", "LOUD"), status=2)
    assert line == (
        "error: bad setting log_level = 'LOUD' (from --log-level): "
        "use DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


def test_secrets_never_appear(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("api_key = 12345678\n")
    (line,) = error(run(tmp_path, "serve", "--port", "0"), status=2)
    assert "12345678" not in line and "api_key = (hidden)" in line


def test_two_upstreams_at_once(tmp_path: Path) -> None:
    (line,) = error(run(tmp_path, "serve", "--vertex", "--emulator"), status=2)
    assert line == "error: choose one of --upstream, --emulator, --vertex"


# --- TLS files --------------------------------------------------------------------------------


def test_missing_tls_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "nope.crt", tmp_path / "nope.key"
    first, hint = error(
        run(tmp_path, "serve", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    )
    assert first == f"error: tls_cert_file {cert}: cannot read: No such file or directory"
    assert "--tls-cert" in hint and "GEMINI_GATEWAY_TLS_CERT_FILE" in hint


def test_tls_files_that_are_not_pem(tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    first, _hint = error(
        run(tmp_path, "serve", "--port", "0", "--tls-cert", str(not_pem), "--tls-key", str(not_pem))
    )
    assert first == (
        f"error: tls_cert_file {not_pem}: not a PEM certificate "
        "(no '-----BEGIN CERTIFICATE-----' line)"
    )


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_key_of_another_certificate(tmp_path: Path) -> None:
    cert, _key = _certificate(tmp_path, "a")
    _cert, other_key = _certificate(tmp_path, "b")
    (line,) = error(
        run(tmp_path, "serve", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(other_key))
    )
    assert line == (
        f"error: tls_key_file {other_key} is not the key of the certificate in tls_cert_file {cert}"
    )


def test_tls_key_without_certificate(tmp_path: Path) -> None:
    _cert, key = _certificate(tmp_path, "a")
    first, hint = error(run(tmp_path, "serve", "--port", "0", "--tls-key", str(key)))
    assert first == "error: tls_key_file is set but tls_cert_file is not"
    assert "--tls-cert" in hint


def test_unreadable_client_ca(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "a")
    ca = tmp_path / "missing-ca.crt"
    first, _hint = error(
        run(
            tmp_path, "serve", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key),
            "--tls-client-ca", str(ca),
        )
    )  # fmt: skip
    assert first == f"error: tls_client_ca_file {ca}: cannot read: No such file or directory"


# --- price table and store --------------------------------------------------------------------


def test_malformed_price_table(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text("nonsense [[\n")
    first, hint = error(
        run(tmp_path, "serve", "--port", "0", GEMINI_GATEWAY_PRICE_TABLE_FILE=str(prices))
    )
    assert first.startswith(f"error: price_table_file {prices}: not valid TOML: ")
    assert "GEMINI_GATEWAY_PRICE_TABLE_FILE" in hint


def test_unreachable_postgresql(tmp_path: Path) -> None:
    port = _closed_port()
    url = f"postgresql+asyncpg://gateway:secret-pw@127.0.0.1:{port}/gateway"
    first, hint = error(run(tmp_path, "serve", "--port", "0", GEMINI_GATEWAY_STORE_URL=url))
    assert first == (
        f"error: store_url postgresql+asyncpg://gateway:***@127.0.0.1:{port}/gateway: "
        f"cannot connect to 127.0.0.1:{port}: connection refused (is PostgreSQL running there?)"
    )
    assert "GEMINI_GATEWAY_STORE_URL" in hint
    assert "secret-pw" not in first + hint


def test_sqlite_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    database = tmp_path / "a-file" / "data" / "gateway.db"
    first, hint = error(
        run(
            tmp_path,
            "serve",
            "--port",
            "0",
            GEMINI_GATEWAY_STORE_URL=f"sqlite+aiosqlite:///{database}",
        )
    )
    assert first == (
        f"error: store_url sqlite+aiosqlite:///{database}: cannot create the folder "
        f"{database.parent}: Not a directory"
    )
    assert "GEMINI_GATEWAY_STORE_URL" in hint


def test_store_url_that_is_not_a_url(tmp_path: Path) -> None:
    first, _hint = error(
        run(tmp_path, "serve", "--port", "0", GEMINI_GATEWAY_STORE_URL="gateway.db")
    )
    assert first == "error: store_url 'gateway.db' is not a database URL"


# --- the README's example configuration -------------------------------------------------------


def test_readme_example_config_loads_and_fails_on_one_clear_line(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    example = re.search(r"Example `gateway\.toml`:\n\n```toml\n(.*?)```", readme, re.S)
    assert example is not None
    config = tmp_path / "conf" / "gateway.toml"
    config.parent.mkdir()
    config.write_text(example.group(1))
    result = run(tmp_path, "serve", "--port", "0", timeout=30, GEMINI_GATEWAY_CONFIG=str(config))
    first, hint = error(result)
    # Its TLS files do not exist here: the first thing checked, before any database.
    assert (
        first == "error: tls_cert_file /etc/gateway/tls.crt: cannot read: No such file or directory"
    )
    assert "--tls-cert" in hint


# --- tune plot --------------------------------------------------------------------------------


def test_tune_plot_to_an_unsupported_format(tmp_path: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase

    (line,) = error(
        run(tmp_path, "tune", "plot", "m", "--out", "x.txt", "--target", "127.0.0.1:1"), status=2
    )
    formats = ", ".join("." + name for name in sorted(FigureCanvasBase.get_supported_filetypes()))
    assert line == f"error: --out x.txt: matplotlib cannot write '.txt' files; use one of {formats}"
    assert ".png" in formats and ".svg" in formats
    assert not (tmp_path / "x.txt").exists()


def test_tune_plot_without_matplotlib(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['matplotlib'] = None; "  # `import matplotlib` now fails
        "sys.argv = ['gemini-gateway', 'tune', 'plot', 'm', '--out', 'x.png', "
        "'--target', '127.0.0.1:1']; "
        "from gemini_gateway.cli import app; app()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    (line,) = error(result)
    assert line == (
        "error: tune plot needs matplotlib: pip install 'gemini-grpc-gateway[plot]' "
        "(from a checkout: pip install '.[plot]')"
    )


# --- anything else ----------------------------------------------------------------------------


def test_unexpected_error_is_two_lines_pointing_at_debug(tmp_path: Path) -> None:
    script = (
        "import sys; import gemini_gateway.server.app as app_module\n"
        "async def broken(settings):\n"
        "    raise KeyError('surprise')\n"
        "app_module.serve = broken\n"
        "sys.argv = ['gemini-gateway', 'serve', '--port', '0']\n"
        "from gemini_gateway.cli import app; app()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    assert error(result) == [
        "error: unexpected KeyError: 'surprise'",
        "  `gemini-gateway --debug ...` (or GEMINI_GATEWAY_DEBUG=1) shows the traceback",
    ]
