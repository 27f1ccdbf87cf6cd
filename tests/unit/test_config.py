"""Settings: defaults, TOML file, environment and explicit values, in that order of weight."""

from pathlib import Path

import pytest

from gemini_gateway.server.config import Settings


def test_defaults_run_offline_on_the_emulator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no gateway.toml here
    settings = Settings()
    assert (settings.upstream, settings.port, settings.http_client) == (
        "emulator",
        50051,
        "aiohttp",
    )
    assert settings.api_key is None


def test_file_then_environment_then_arguments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        'upstream = "gemini"\nport = 6000\napi_key = "from-file"\nlog_level = "DEBUG"\n'
    )
    monkeypatch.setenv("GEMINI_GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("GEMINI_GATEWAY_PORT", "7000")
    settings = Settings()
    assert settings.upstream == "gemini"
    assert settings.port == 7000  # environment beats the file
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-file"
    assert "from-file" not in repr(settings)  # secrets never print
    assert Settings(port=8000).port == 8000  # explicit (CLI) values beat both


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_GATEWAY_HTTP_CLIENT", "curl")
    with pytest.raises(ValueError, match="http_client"):
        Settings()
