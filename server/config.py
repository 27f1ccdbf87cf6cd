"""Gateway settings: one typed object, read from the environment and an optional TOML file.

Precedence: command-line options > environment (GEMINI_GATEWAY_*) > the TOML file named by
GEMINI_GATEWAY_CONFIG (default ./gateway.toml, when present) > defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

GEMINI_API_URL = "https://generativelanguage.googleapis.com"

UpstreamKind = Literal["emulator", "gemini", "vertex"]
DEFAULT_STORE_URL = "sqlite+aiosqlite:///" + str(
    Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    / "gemini-gateway"
    / "gateway.db"
)


class CallerConfig(BaseModel):
    """A caller of a project, known by the SHA-256 of its bearer token, or by the subject of
    its client certificate (mTLS), or both (docs/security.md)."""

    name: str = Field(description="Caller name recorded with its calls (e.g. a service name).")
    token_sha256: str | None = Field(
        None,
        description="Hex SHA-256 of the caller's bearer token (`authorization: Bearer ...`).",
    )
    default_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to this caller's generate calls."
    )
    tls_subject: str | None = Field(
        None,
        description="Subject of the caller's client certificate, as gRPC reports it "
        "(`CN=api,O=Example`) or as OpenSSL prints it (`/O=Example/CN=api`); needs "
        "tls_client_ca_file (mutual TLS).",
    )

    @model_validator(mode="after")
    def _has_a_credential(self) -> CallerConfig:
        if not self.token_sha256 and not self.tls_subject:
            raise ValueError(f"caller {self.name!r} needs token_sha256 or tls_subject")
        if self.token_sha256 and not re.fullmatch(r"\s*[0-9a-fA-F]{64}\s*", self.token_sha256):
            raise ValueError(
                f"caller {self.name!r}: token_sha256 must be 64 hex digits (the SHA-256 of "
                "the token, not the token itself)"
            )
        return self


AtLimit = Literal["stop_logging", "evict_oldest"]


class ProjectLoggingConfig(BaseModel):
    """A project's request-logging defaults; unset fields follow the gateway-wide settings.

    The LogService's UpdateLoggingSettings overrides them at run time (kept in the store).
    """

    enabled: bool | None = Field(None, description="Log this project's generate calls.")
    max_logs: int | None = Field(None, ge=1, description="Most logs kept.")
    retention_days: float | None = Field(
        None, gt=0, description="Logs older than this are deleted unless in a dataset."
    )
    at_limit: AtLimit | None = Field(
        None, description="stop_logging (as AI Studio) or evict_oldest, at the limit."
    )


class ProjectConfig(BaseModel):
    """A project: the callers that belong to it and the labels its calls carry by default."""

    default_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to the project's generate calls."
    )
    callers: list[CallerConfig] = Field(default_factory=list)
    logging: ProjectLoggingConfig = Field(
        default_factory=ProjectLoggingConfig, description="Request-logging defaults."
    )
    max_concurrent_calls: int | None = Field(
        None,
        ge=0,
        description="Most forwarded calls of this project in flight at once; unset: the "
        "gateway-wide max_concurrent_calls, 0: no limit (docs/limits.md).",
    )
    requests_per_minute: int | None = Field(
        None,
        ge=0,
        description="Forwarded calls this project may start per minute; unset: the "
        "gateway-wide requests_per_minute, 0: no limit (docs/limits.md).",
    )
    tokens_per_minute: int | None = Field(
        None,
        ge=0,
        description="Tokens (usage totalTokenCount) this project's generate calls may use per "
        "minute; unset: the gateway-wide tokens_per_minute, 0: no limit (docs/limits.md).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEMINI_GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(50051, description="gRPC port (0 picks a free one).")
    upstream: UpstreamKind = Field(
        "emulator",
        description="emulator (embedded, offline), gemini (API key) or vertex (ADC).",
    )
    upstream_url: str | None = Field(
        None,
        description="Base URL of the REST upstream; defaults per upstream kind "
        "(embedded emulator's loopback URL, Google's Gemini API, Vertex AI's host).",
    )
    api_key: SecretStr | None = Field(
        None, description="Gemini API key the gateway sends upstream."
    )
    pass_through_api_key: bool = Field(
        False,
        description="Send the caller's x-goog-api-key metadata upstream (else api_key).",
    )
    vertex_project: str | None = Field(None, description="Google Cloud project for Vertex AI.")
    vertex_location: str = Field("us-central1", description="Vertex AI location ('global' too).")
    http_client: Literal["aiohttp", "httpx"] = Field(
        "aiohttp", description="Upstream HTTP client library."
    )
    upstream_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Upstream time limit for a unary call that carries no gRPC deadline "
        "(streams: upstream_stream_timeout_s; docs/security.md).",
    )
    upstream_stream_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Upstream time limit for a whole stream (StreamGenerateContent) that "
        "carries no gRPC deadline; unary calls use upstream_timeout_s (docs/security.md).",
    )
    connect_timeout_s: float = Field(10.0, description="Upstream connect time limit.")
    max_connections: int = Field(
        256,
        ge=1,
        description="Upstream connections per gateway process; each call in flight holds "
        "one (a stream until its end). A call that finds none free within pool_wait_s is "
        "refused with RESOURCE_EXHAUSTED (docs/limits.md).",
    )
    pool_wait_s: float = Field(
        1.0,
        ge=0,
        description="How long a call may wait for a free upstream connection (never past its "
        "deadline) before it is refused with RESOURCE_EXHAUSTED; 0: refused at once "
        "(docs/limits.md).",
    )
    max_concurrent_calls: int = Field(
        0,
        ge=0,
        description="Most forwarded calls of one project in flight at once, for projects "
        "that do not set their own; 0: no limit beyond the pool share (docs/limits.md).",
    )
    requests_per_minute: int = Field(
        0,
        ge=0,
        description="Forwarded calls one project may start per minute, for projects that do "
        "not set their own; 0: no limit (docs/limits.md).",
    )
    tokens_per_minute: int = Field(
        0,
        ge=0,
        description="Tokens one project's generate calls may use per minute (counted from "
        "the answers' usage after each call), for projects that do not set their own; "
        "0: no limit (docs/limits.md).",
    )
    limit_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long a call may wait for a free concurrency slot before it is "
        "refused with RESOURCE_EXHAUSTED; 0: refused at once (docs/limits.md).",
    )
    reserved_pool_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the upstream pool (max_connections) kept in reserve for the "
        "configured projects, in equal parts, when there are two or more; the rest is shared "
        "first come, first served (docs/limits.md).",
    )
    max_message_mb: int = Field(32, description="Largest gRPC message accepted or sent, in MiB.")
    max_upstream_body_mb: float = Field(
        32.0,
        gt=0,
        description="Largest upstream answer of a unary call, in MiB (decoded); a larger one "
        "is refused with RESOURCE_EXHAUSTED without being read whole.",
    )
    max_sse_event_mb: float = Field(
        16.0,
        gt=0,
        description="Largest single event of an upstream stream, in MiB; a larger one ends "
        "the call with RESOURCE_EXHAUSTED.",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mTLS)."
    )
    shutdown_grace_s: float = Field(5.0, description="Time in-flight calls get on shutdown.")
    workers: int | None = Field(
        None,
        ge=0,
        description="Gateway processes sharing the port (SO_REUSEPORT, Linux); 0 starts one "
        "per core. Unset: one per core in production mode (callers configured, or an address "
        "other than loopback), 1 in development mode on loopback. Above 1, a parent process "
        "supervises them and serves the metrics.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or json: one JSON object per line with time, level, "
        "logger, message and the call's request_id (docs/observability.md).",
    )
    tracing_enabled: bool = Field(
        False,
        description="Trace calls with OpenTelemetry, exported as the standard OTEL_* "
        "variables say (OTLP by default); OTEL_SDK_DISABLED=true turns it off again "
        "(docs/observability.md).",
    )
    retries_enabled: bool = Field(
        True,
        description="Send an upstream request again when it failed before any answer byte "
        "(HTTP 429, 503, connection refused or broken), by the rule in "
        "docs/observability.md.",
    )
    retry_max_attempts: int = Field(
        3, ge=1, description="Most upstream attempts per call, the first included."
    )
    retry_initial_backoff_s: float = Field(
        0.1, gt=0, description="Longest wait before the first retry (full jitter: 0 to this)."
    )
    retry_max_backoff_s: float = Field(
        2.0, gt=0, description="Longest wait before any retry; it doubles from the initial one."
    )
    retry_max_server_delay_s: float = Field(
        2.0,
        ge=0,
        description="Longest RetryInfo / Retry-After delay waited for; when the upstream "
        "asks for more, the caller gets its error (with the RetryInfo) at once.",
    )
    retry_budget_ratio: float = Field(
        0.2,
        ge=0,
        description="Retries allowed, as a share of the calls of the last 10 s (0.2: one "
        "retry per five calls), on top of retry_budget_min_per_s.",
    )
    retry_budget_min_per_s: float = Field(
        3.0, ge=0, description="Retries allowed per second however few calls there are."
    )
    metrics_port: int | None = Field(
        None, description="Serve Prometheus metrics at http://host:port/metrics (off if unset)."
    )
    console_port: int | None = Field(
        None,
        description="Serve the web console and the REST/JSON face of the gateway's own "
        "services on this port (0 picks a free one). Unset: `serve` opens it on 8080 in "
        "development mode on a loopback address, and nowhere otherwise.",
    )
    strip_labels: bool = Field(
        False,
        description="Do not send `labels` upstream (for endpoints that reject the field); "
        "they are still validated and recorded.",
    )
    default_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels added to every generate call (under project, caller and call labels).",
    )
    projects: dict[str, ProjectConfig] = Field(
        default_factory=dict,
        description="Projects and their callers; with none, every call is the `default` "
        "project's, caller `anonymous`.",
    )
    store_url: str = Field(
        DEFAULT_STORE_URL,
        description="SQLAlchemy URL of the store: SQLite (embedded, created on first start) or "
        "postgresql+asyncpg://... shared by several gateway replicas.",
    )
    record_usage: bool = Field(
        True,
        description="Record one usage event per generate call, and meter each Batch API batch "
        "once it is done.",
    )
    recorder_queue_size: int = Field(
        10_000,
        description="Events held in memory for the store; beyond it they are dropped "
        "and counted (gateway_recorder_dropped_events_total).",
    )
    price_table_file: Path | None = Field(
        None, description="TOML price table replacing the shipped one (see docs/usage.md)."
    )
    logging_enabled: bool = Field(
        False,
        description="Log generate calls (request and response) of projects that do not set "
        "it themselves; switchable per project at run time (LogService).",
    )
    log_max_logs: int = Field(1000, ge=1, description="Logs kept per project by default.")
    log_retention_days: float = Field(
        55.0, gt=0, description="Logs older than this are deleted unless in a dataset."
    )
    log_at_limit: AtLimit = Field(
        "stop_logging",
        description="At the limit: stop_logging (new calls are not logged, as AI Studio) or "
        "evict_oldest (the oldest logs in no dataset make room).",
    )
    log_purge_interval_s: float = Field(
        3600.0, gt=0, description="How often expired logs are looked for and deleted."
    )
    batch_meter_interval_s: float = Field(
        300.0,
        ge=0.0,
        description="How often the Batch API batches not metered yet are read upstream, so "
        "one that has ended is metered even if nobody reads it; 0: only when read.",
    )
    run_lease_s: float = Field(
        60.0,
        ge=1.0,
        description="A dataset re-run's lease, extended every quarter of it while the run goes "
        "on; an unfinished run past its lease was left by a process that stopped or died: a "
        "BATCH run with a submitted batch is adopted, any other is failed.",
    )
    metrics_label_keys: list[str] = Field(
        default_factory=list,
        description="Label keys that become Prometheus label dimensions; others never do.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve an address other than loopback with no callers configured "
        "(development mode, every call anonymous): refused at start-up unless this is set.",
    )
    pass_through_fallback_to_gateway_key: bool = Field(
        False,
        description="In pass-through mode, send the gateway's api_key for a call that brings "
        "no x-goog-api-key of its own (else such a call is refused, UNAUTHENTICATED).",
    )
    open_reflection: bool = Field(
        True, description="Serve gRPC server reflection to callers without a token."
    )
    open_health: bool = Field(
        True, description="Serve the gRPC health service to callers without a token."
    )
    unowned_resources_project: str | None = Field(
        None,
        description="With callers configured, the project that may use tuned models and "
        "batches of no known project (made before the gateway recorded owners, or outside "
        "it); unset, no project may (docs/security.md).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("GEMINI_GATEWAY_CONFIG", "gateway.toml"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file)
        return (init_settings, env_settings, toml)
