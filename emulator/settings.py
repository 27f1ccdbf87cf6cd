"""Configuration of the emulator, read from GEMINI_EMULATOR_* environment variables."""

from __future__ import annotations

from aiohttp import web
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gemini_gateway.emulator.faults import parse_fault_list


class EmulatorSettings(BaseSettings):
    """Behaviour knobs of the emulator; every field can be set from the environment."""

    model_config = SettingsConfigDict(env_prefix="GEMINI_EMULATOR_", extra="ignore")

    chunk_count: int = 3
    """Chunks per streamed response (at least one is always sent)."""
    chunk_delay_ms: float = 0
    """Pause between streamed chunks."""
    headers_delay_ms: float = 0
    """Pause before any response headers of the Google API surface."""
    fault: str | None = None
    """Fault list applied to every generate request (same vocabulary as x-emulator-fault)."""
    api_key: str | None = None
    """When set, requests must carry this key (x-goog-api-key header or ?key=)."""
    tuning_seconds: float = 3.0
    """Wall-clock duration of an emulated tuning job."""
    batch_seconds: float = 2.0
    """Wall-clock duration of an emulated batch (BatchGenerateContent)."""
    seed: int = 0
    """Seed for generated text, schema values, embeddings and tuned-model ids."""
    request_log_size: int = 200
    """How many requests /_emulator/requests keeps."""
    strict_fields: bool = True
    """Refuse unknown fields in generate, countTokens and embed bodies with Google's 400;
    False ignores them (GEMINI_EMULATOR_STRICT_FIELDS=false, or --lenient-fields)."""

    @field_validator("fault")
    @classmethod
    def _check_fault(cls, value: str | None) -> str | None:
        # Reject a typo at start-up rather than on every request.
        if value is not None and value.strip():
            parse_fault_list(value)
            return value
        return None


SETTINGS_KEY = web.AppKey("emulator_settings", EmulatorSettings)
