"""Start-up problems a user can fix, each told in one or two lines that name the fix.

Everything here runs before the gateway serves: reading the settings, the TLS files, the
port, the credentials of the Vertex AI upstream, the price table and the store. A problem
raises StartupError, whose `lines` are what the command line prints (no traceback; the
original exception stays attached as `__cause__` for `gemini-gateway --debug`).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from gemini_gateway.server.config import Settings
from gemini_gateway.server.pricing import PriceTable, PriceTableError

if TYPE_CHECKING:
    from gemini_gateway.server.store import Store
    from gemini_gateway.server.upstream import Flavour

CONFIG_ENV = "GEMINI_GATEWAY_CONFIG"
ENV_PREFIX = "GEMINI_GATEWAY_"
# Settings whose values never appear in a message.
SECRET_SETTINGS = frozenset({"api_key"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Longest value quoted in a message; longer ones are cut with an ellipsis.
SHOWN_VALUE_CHARS = 60
# Most settings errors listed for one start-up; the rest are counted.
MAX_SETTING_ERRORS = 5


class StartupError(RuntimeError):
    """The gateway cannot start: `message` says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message if hint is None else f"{message}\n  {hint}")
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    @property
    def lines(self) -> list[str]:
        return [self.message] if self.hint is None else [self.message, self.hint]


# --- settings ---------------------------------------------------------------------------------


def config_file() -> Path:
    """The TOML file the settings read (it may not exist)."""
    return Path(os.environ.get(CONFIG_ENV, "gateway.toml"))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 1] + "…"


def _env_name(setting: str) -> str | None:
    """The environment variable that set `setting`, as spelt in the environment."""
    wanted = (ENV_PREFIX + setting).upper()
    return next((name for name in os.environ if name.upper() == wanted), None)


def _source(setting: str, options: Mapping[str, str]) -> str:
    """Where a setting's value came from, by the settings' precedence."""
    if setting in options:
        return options[setting]
    return _env_name(setting) or str(config_file())


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected text",
    "dict_type": "expected a table of key = value pairs",
    "list_type": "expected a list",
    "model_type": "expected a table",
    "missing": "required, and missing",
}


def _setting_problem(error: Mapping[str, Any], options: Mapping[str, str]) -> str:
    loc = tuple(error["loc"])
    setting = str(loc[0]) if loc else "?"
    kind = error["type"]
    if kind == "literal_error":
        expected = f"use {error['ctx']['expected']}"
    elif kind == "value_error":  # a validator's own sentence
        expected = str(error.get("ctx", {}).get("error", "")) or error["msg"]
    else:
        expected = _EXPECTED.get(kind, error["msg"])
    if kind == "missing" or isinstance(error.get("input"), Mapping):
        value = ""  # a whole table: its path says which
    elif setting in SECRET_SETTINGS:
        value = " = (hidden)"
    else:
        value = f" = {_shown(error['input'])}"
    return f"bad setting {_path(loc)}{value} (from {_source(setting, options)}): {expected}"


def _settings_error(exc: SettingsError, options: Mapping[str, str]) -> StartupError:
    """pydantic-settings could not decode a value (an environment variable that is not JSON)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    if match is None:
        return StartupError(f"bad settings: {exc}", exit_code=2)
    setting = match.group(1)
    field = Settings.model_fields.get(setting)
    is_list = field is not None and str(field.annotation).startswith("list")
    example = '["team"]' if is_list else '{"team": "search"}'
    return StartupError(
        f"bad setting {setting} (from {_source(setting, options)}): expected JSON, "
        f"e.g. '{example}'",
        exit_code=2,
    )


def load_settings(
    overrides: Mapping[str, object] | None = None, options: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the command line (`overrides`), the environment and the TOML file.

    `options` maps a setting to the command-line option that gave it, for messages.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    named = {key: (options or {}).get(key, key) for key in given}
    try:
        settings = Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_setting_problem(error, named) for error in errors[:MAX_SETTING_ERRORS]]
        if len(errors) > MAX_SETTING_ERRORS:
            lines.append(f"and {len(errors) - MAX_SETTING_ERRORS} more bad settings")
        raise StartupError(lines[0], "\n  ".join(lines[1:]) or None, exit_code=2) from exc
    except SettingsError as exc:
        raise _settings_error(exc, named) from exc
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(
            f"{config_file()}: not valid TOML: {exc}",
            f"fix the file, or point {CONFIG_ENV} at another one",
            exit_code=2,
        ) from exc
    except OSError as exc:
        raise StartupError(
            f"{config_file()}: cannot read: {exc.strerror or exc}",
            f"fix the file, or point {CONFIG_ENV} at another one",
            exit_code=2,
        ) from exc
    if settings.log_level.upper() not in LOG_LEVELS:
        raise StartupError(
            f"bad setting log_level = {_shown(settings.log_level)} "
            f"(from {_source('log_level', named)}): use {', '.join(LOG_LEVELS)}",
            exit_code=2,
        )
    return settings


# --- TLS --------------------------------------------------------------------------------------

_TLS_OPTIONS = {
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "tls_client_ca_file": "--tls-client-ca",
}
_KEY_BEGIN = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?)PRIVATE KEY-----")


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes gRPC's server credentials are made of."""

    chain: bytes
    key: bytes
    client_ca: bytes | None


def _tls_name(setting: str, path: Path) -> str:
    return f"{setting} {path}"


def _where(setting: str) -> str:
    """The ways to give a TLS setting, for hints."""
    return f"{_TLS_OPTIONS[setting]}, {ENV_PREFIX}{setting.upper()} or {setting} in gateway.toml"


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise StartupError(
            f"{_tls_name(setting, path)}: cannot read: {exc.strerror or exc}",
            f"give a readable PEM file ({_where(setting)}), or unset it to serve without TLS",
        ) from exc


def _load_certificates(setting: str, path: Path, data: bytes) -> None:
    """Certificates OpenSSL can parse; StartupError naming the file otherwise."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise StartupError(
            f"{_tls_name(setting, path)}: not a PEM certificate "
            "(no '-----BEGIN CERTIFICATE-----' line)",
            "give a PEM file; convert DER with: openssl x509 -inform der -in FILE -out FILE.pem",
        )
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise StartupError(
            f"{_tls_name(setting, path)}: the certificate does not parse ({exc})"
        ) from exc


def read_tls_files(settings: Settings) -> TlsFiles | None:
    """The TLS files the settings name, checked; None when TLS is off."""
    cert, key, client_ca = (
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
    )
    if cert is None:
        if key is not None or client_ca is not None:
            given = "tls_key_file" if key is not None else "tls_client_ca_file"
            raise StartupError(
                f"{given} is set but tls_cert_file is not",
                "TLS needs a certificate chain and its key: --tls-cert CHAIN.pem --tls-key "
                "KEY.pem (tls_cert_file, tls_key_file)",
            )
        return None
    if key is None:
        raise StartupError(
            "tls_cert_file is set but tls_key_file is not",
            "give the certificate's private key: --tls-key KEY.pem (tls_key_file)",
        )
    chain = _read("tls_cert_file", cert)
    key_pem = _read("tls_key_file", key)
    root = _read("tls_client_ca_file", client_ca) if client_ca is not None else None
    _load_certificates("tls_cert_file", cert, chain)
    found = _KEY_BEGIN.search(key_pem)
    if found is None:
        raise StartupError(
            f"{_tls_name('tls_key_file', key)}: not a PEM private key "
            "(no '-----BEGIN PRIVATE KEY-----' line)"
        )
    if found.group(1) == b"ENCRYPTED ":
        raise StartupError(
            f"{_tls_name('tls_key_file', key)}: the key is encrypted; gRPC needs it unencrypted",
            f"decrypt it with: openssl pkey -in {key} -out KEY.pem",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert.expanduser(), key.expanduser(), password=b"")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise StartupError(
                f"{_tls_name('tls_key_file', key)} is not the key of the certificate in "
                f"tls_cert_file {cert}"
            ) from exc
        raise StartupError(
            f"{_tls_name('tls_key_file', key)}: the private key does not parse ({exc})"
        ) from exc
    if client_ca is not None and root is not None:
        _load_certificates("tls_client_ca_file", client_ca, root)
    return TlsFiles(chain, key_pem, root)


# --- who may call -----------------------------------------------------------------------------

ALLOW_UNAUTHENTICATED_HINT = (
    "configure callers (projects.<name>.callers in gateway.toml, docs/security.md), bind "
    "loopback (--host 127.0.0.1), or accept anonymous callers from the network with "
    "--allow-unauthenticated (GEMINI_GATEWAY_ALLOW_UNAUTHENTICATED=true)"
)


def has_callers(settings: Settings) -> bool:
    """Whether any caller identity is configured (production mode)."""
    return any(project.callers for project in settings.projects.values())


def is_loopback(host: str) -> bool | None:
    """Whether every address `host` names is a loopback one (a name is resolved); None when
    the name does not resolve (check_port says so)."""
    name = _host(host)
    if name is None:
        return False  # every address
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in addresses
    )


def check_exposure(settings: Settings) -> None:
    """Development mode (no callers: every call is anonymous and uses the gateway's key)
    serves loopback only, unless allow_unauthenticated says otherwise; callers known by a
    certificate subject need mutual TLS to present one."""
    if not has_callers(settings) and not settings.allow_unauthenticated:
        if is_loopback(settings.host) is False:
            raise StartupError(
                f"no callers are configured, so anyone who reaches {settings.host} could call "
                "the gateway (and spend its API key): refusing to serve a non-loopback "
                "address without allow_unauthenticated",
                ALLOW_UNAUTHENTICATED_HINT,
            )
    if settings.tls_client_ca_file is None:
        for name, project in settings.projects.items():
            for caller in project.callers:
                if caller.tls_subject:
                    raise StartupError(
                        f"projects.{name}: caller {caller.name!r} is known by its client "
                        "certificate (tls_subject), but the gateway asks for none",
                        "serve mutual TLS: --tls-cert, --tls-key and --tls-client-ca "
                        "(tls_client_ca_file), or give the caller a token_sha256",
                    )


def security_lines(settings: Settings) -> list[str]:
    """What the start-up banner says about who may call."""
    if has_callers(settings):
        count = sum(len(project.callers) for project in settings.projects.values())
        open_services = [
            name
            for name, is_open in (
                ("reflection", settings.open_reflection),
                ("health", settings.open_health),
            )
            if is_open
        ]
        lines = [
            f"  callers: {count} in {len(settings.projects)} project(s); every call needs a "
            "caller token"
            + (" or client certificate" if settings.tls_client_ca_file is not None else "")
            + (f" ({' and '.join(open_services)} open to all)" if open_services else "")
        ]
    elif is_loopback(settings.host):
        lines = [
            "  development mode: no callers configured, every call is anonymous (project "
            "`default`); serving loopback only"
        ]
    else:
        lines = [
            f"  WARNING: development mode on {settings.host} (allow_unauthenticated): no "
            "callers configured, anyone who reaches this address can call the gateway"
        ]
    if settings.pass_through_api_key:
        lines.append(
            "  pass-through: each call's own x-goog-api-key goes upstream"
            + (
                "; calls without one use the gateway's key"
                if settings.pass_through_fallback_to_gateway_key
                else "; calls without one are refused"
            )
        )
    return lines


# --- listening ports --------------------------------------------------------------------------


def _host(host: str) -> str | None:
    """`host` as getaddrinfo takes it: no brackets around IPv6; None for every address."""
    if host in ("", "*"):
        return None
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def listen_error(
    what: str, host: str, port: int, exc: BaseException | None, option: str = "--port"
) -> StartupError:
    """Why `what` cannot listen on host:port, and how to choose another port or address."""
    address = f"{host}:{port}"
    code = getattr(exc, "errno", None)
    if isinstance(exc, OverflowError) or not 0 <= port <= 65535:
        return StartupError(
            f"{what} cannot listen on port {port}: ports go from 0 to 65535",
            f"pick another: {option} N, or {option} 0 for any free port",
        )
    if isinstance(exc, socket.gaierror):
        return StartupError(
            f"{what} cannot listen on {address}: host {host!r} does not resolve",
            "set --host (GEMINI_GATEWAY_HOST) to 127.0.0.1, 0.0.0.0 or an address of this machine",
        )
    if code == errno.EACCES:
        return StartupError(
            f"{what} cannot listen on {address}: permission denied (ports below 1024 are "
            "privileged)",
            f"pick a port from 1024 up: {option} N, or {option} 0 for any free port",
        )
    if code == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{what} cannot listen on {address}: {host} is not an address of this machine",
            "set --host (GEMINI_GATEWAY_HOST) to 127.0.0.1, 0.0.0.0 or an address of this machine",
        )
    if what == "the gateway" and option == "--port":
        choices = f"{option} N, PORT=N make serve, or {option} 0 for any free port"
    else:
        choices = f"{option} N, or {option} 0 for any free port"
    if code in (None, errno.EADDRINUSE):
        problem = "the address is already in use"
    else:
        problem = os.strerror(code) if isinstance(code, int) else str(exc)
    return StartupError(
        f"{what} cannot listen on {address}: {problem}", f"pick another port: {choices}"
    )


def https_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the web console, from the gRPC port's files (read_tls_files has checked
    them): the same certificate and key, and with tls_client_ca_file the same demand for a
    client certificate signed by that CA. None when the gateway serves no TLS."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # the console speaks HTTP/1.1
    context.load_cert_chain(settings.tls_cert_file.expanduser(), settings.tls_key_file.expanduser())
    if settings.tls_client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.tls_client_ca_file.expanduser())
    return context


def check_port(host: str, port: int, what: str = "the gateway", option: str = "--port") -> None:
    """Fail early, with the reason, when host:port cannot be listened on.

    Binds a probe socket to each address `host` resolves to, as the gRPC server will; the
    port is free when one of them binds. Port 0 checks the address alone.
    """
    if not 0 <= port <= 65535:
        raise listen_error(what, host, port, None, option)
    try:
        infos = socket.getaddrinfo(
            _host(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise listen_error(what, host, port, exc, option) from exc
    first: OSError | None = None
    for family, kind, proto, _name, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            first = first or exc
            continue
        return
    if first is not None:
        raise listen_error(what, host, port, first, option) from first


# --- upstream, price table, store -------------------------------------------------------------


def vertex_flavour(settings: Settings) -> Flavour:
    """The Vertex AI upstream, or StartupError saying how to give it credentials and a project."""
    from google.auth.exceptions import DefaultCredentialsError

    from gemini_gateway.server.upstream import make_flavour

    needs_project = (
        ""
        if settings.vertex_project
        else "; --vertex also needs a project: GEMINI_GATEWAY_VERTEX_PROJECT=my-project"
    )
    # google-auth logs a warning per place it looked in vain; the error below says it all.
    auth_log = logging.getLogger("google.auth")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        return make_flavour(settings)
    except DefaultCredentialsError as exc:
        given = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        found = (
            f"cannot use GOOGLE_APPLICATION_CREDENTIALS={given}: {str(exc).splitlines()[0]}"
            if given
            else "found none"
        )
        raise StartupError(
            f"the vertex upstream (--vertex) needs Google credentials and {found}",
            "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
            f"to a key file{needs_project}",
        ) from exc
    except ValueError as exc:
        if "vertex_project" not in str(exc):
            raise
        raise StartupError(
            "the vertex upstream (--vertex) needs a Google Cloud project, and the credentials "
            "name none",
            "set GEMINI_GATEWAY_VERTEX_PROJECT=my-project (or vertex_project in gateway.toml)",
        ) from exc
    finally:
        auth_log.setLevel(level)


def load_price_table(path: Path | None) -> PriceTable:
    try:
        return PriceTable.load(path)
    except PriceTableError as exc:
        raise StartupError(
            f"price_table_file {exc}",
            "fix the file, or unset price_table_file (GEMINI_GATEWAY_PRICE_TABLE_FILE) to use "
            "the shipped table",
        ) from exc


def _store_problem(url: Any, exc: BaseException) -> str:
    from sqlalchemy.exc import DBAPIError

    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    if isinstance(exc, socket.gaierror):
        return f"cannot connect to {where}: host {url.host!r} not found"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused (is PostgreSQL running there?)"
    if isinstance(exc, TimeoutError):
        return f"cannot connect to {where}: no answer"
    if isinstance(exc, OSError) and url.get_backend_name() == "sqlite":
        folder = exc.filename or Path(url.database or "").expanduser().parent
        return f"cannot create the folder {folder}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    if isinstance(exc, DBAPIError):
        return f"the database refused: {str(exc.orig).splitlines()[0]}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"cannot open the store: {type(exc).__name__}: {first}"


async def open_store(url: str) -> Store:
    """The store at `url`, created and migrated; StartupError naming store_url otherwise."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from gemini_gateway.server import store

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StartupError(
            f"store_url {url!r} is not a database URL",
            "use sqlite+aiosqlite:///path/gateway.db or postgresql+asyncpg://user@host/db "
            "(GEMINI_GATEWAY_STORE_URL, or store_url in gateway.toml)",
        ) from exc
    try:
        return await store.open_store(url)
    except store.StoreError as exc:
        raise StartupError(f"store_url: {exc}") from exc
    except Exception as exc:
        shown = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite":
            hint = (
                "set store_url (GEMINI_GATEWAY_STORE_URL, or store_url in gateway.toml) to a "
                "file in a folder the gateway can create, e.g. sqlite+aiosqlite:///gateway.db"
            )
        else:
            hint = (
                "start the database, or set store_url (GEMINI_GATEWAY_STORE_URL, or store_url "
                "in gateway.toml) to one that answers; unset, the gateway keeps a SQLite file"
            )
        raise StartupError(f"store_url {shown}: {_store_problem(parsed, exc)}", hint) from exc


def missing_module(exc: ModuleNotFoundError) -> StartupError | None:
    """The extra to install when an optional library is missing, if it is one of ours."""
    if exc.name == "httpx":
        return StartupError(
            "http_client = 'httpx' needs httpx, which is not installed",
            "pip install 'gemini-grpc-gateway[httpx]' (from a checkout: pip install '.[httpx]'), "
            "or use --http-client aiohttp",
        )
    return None
