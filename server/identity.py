"""Who is calling: the caller and project behind a gRPC call, and their default labels.

A caller proves who it is in one of two ways:

- a bearer token (`authorization: Bearer <token>` metadata). The configuration holds only
  the token's SHA-256 (`callers[].token_sha256`), so neither the config file nor a memory
  dump gives tokens away;
- with mutual TLS (`tls_client_ca_file`), the subject of its client certificate
  (`callers[].tls_subject`), which gRPC has verified against the CA before the call starts.

A call that carries a token is identified by the token alone (an unknown token is refused
even over mTLS); one without, by its certificate. With no callers configured every call
belongs to project `default`, caller `anonymous` (development mode).

Timing. A presented token is hashed, and the caller is looked up in a dict keyed by the
SHA-256 hex digest. The lookup's timing depends on the digest, never on the token: what an
attacker could learn from it is how many leading characters of *the digest of its own
guess* match a configured digest, and producing a guess whose digest shares even a few
characters with a target's costs a preimage search (16^k SHA-256 evaluations for k hex
characters); learning a whole digest would not authenticate anyone anyway, since only the
token does. The entry found is then confirmed with `hmac.compare_digest` against the
configured digest, so the one comparison of secret-derived values is constant-time. A
scan of every configured digest with compare_digest would cost a comparison per caller on
every call and protect nothing more.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings

DEFAULT_PROJECT = "default"
ANONYMOUS = "anonymous"
# A call's metadata as grpc.aio gives it (grpc.aio.Metadata or a tuple of pairs).
Metadata = Collection[tuple[str, str | bytes]]
API_KEY_METADATA = "x-goog-api-key"

# The verified client-certificate subject of the call being served, for code that reads only
# the call's metadata (the gateway's own services): set per call by tenancy.CallerInterceptor.
# Tasks a call starts (dataset re-runs) inherit it, as they inherit the caller's metadata.
PEER_SUBJECT: ContextVar[str | None] = ContextVar("gateway_peer_subject", default=None)

_SUBJECT_PART = re.compile(r"\s*([A-Za-z0-9.]+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Identity:
    """A caller, its project, and the labels its generate calls get unless they set them."""

    project: str
    caller: str
    default_labels: Mapping[str, str] = field(default_factory=dict)


# The token the call being served was identified by, and its caller: the caller interceptor,
# the limits and the handler all identify the call, and hash its token only once. grpc.aio
# serves each call in a task of its own, so this never outlives the call.
_CALL_TOKEN: ContextVar[tuple[object, str, Identity] | None] = ContextVar(
    "gateway_call_token", default=None
)


def token_sha256(token: str) -> str:
    """What the configuration stores for a caller's token (`callers[].token_sha256`)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def normalize_subject(subject: str) -> str:
    """A certificate subject in one spelling, to compare configured and presented ones.

    gRPC reports subjects as RFC 4514 text, most specific first (`CN=api,OU=ads,O=Example`).
    The configuration may give that, or OpenSSL's `/O=Example/OU=ads/CN=api` (least specific
    first); blanks around `,` and `=` and the case of attribute names do not matter.
    """
    text = subject.strip()
    if text.startswith("/"):
        parts = [part for part in _split_unescaped(text[1:], "/") if part.strip()]
        parts.reverse()
    else:
        parts = _split_unescaped(text, ",")
    normalized = []
    for part in parts:
        match = _SUBJECT_PART.fullmatch(part)
        if match is None:
            normalized.append(part.strip())
        else:
            normalized.append(f"{match.group(1).upper()}={match.group(2)}")
    return ",".join(normalized)


def _bearer_token(metadata: Metadata) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _has_api_key(metadata: Metadata) -> bool:
    return any(key == API_KEY_METADATA and value for key, value in metadata)


def peer_subject(context: Any) -> str | None:
    """The verified client-certificate subject of a call (mTLS), or None."""
    auth_context = getattr(context, "auth_context", None)
    if auth_context is None:
        return None
    try:
        values = auth_context().get("x509_subject") or ()
    except Exception:  # a context without a transport (a call the gateway makes itself)
        return None
    for value in values:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


class CallerDirectory:
    """Resolves the identity of each call from the configured projects and callers."""

    def __init__(self, settings: Settings) -> None:
        gateway_defaults = dict(settings.default_labels)
        self._by_hash: dict[str, tuple[bytes, Identity]] = {}
        self._by_subject: dict[str, Identity] = {}
        for project_name, project in settings.projects.items():
            for caller in project.callers:
                labels = {**gateway_defaults, **project.default_labels, **caller.default_labels}
                identity = Identity(project_name, caller.name, labels)
                if caller.token_sha256:
                    digest = caller.token_sha256.strip().lower()
                    if digest in self._by_hash:
                        raise ValueError(
                            f"projects.{project_name}: caller {caller.name!r} has the same "
                            f"token as {self._by_hash[digest][1].caller!r}"
                        )
                    self._by_hash[digest] = (digest.encode(), identity)
                if caller.tls_subject:
                    subject = normalize_subject(caller.tls_subject)
                    if subject in self._by_subject:
                        raise ValueError(
                            f"projects.{project_name}: caller {caller.name!r} has the same "
                            f"tls_subject as {self._by_subject[subject].caller!r}"
                        )
                    self._by_subject[subject] = identity
        self._development = Identity(DEFAULT_PROJECT, ANONYMOUS, gateway_defaults)
        # Pass-through mode: a forwarded call must bring its own key, unless allowed not to.
        self._requires_caller_key = (
            settings.pass_through_api_key
            and settings.upstream != "vertex"
            and not settings.pass_through_fallback_to_gateway_key
        )

    @property
    def requires_caller_key(self) -> bool:
        """Pass-through mode without a fallback: the gateway holds no key to call with itself."""
        return self._requires_caller_key

    @property
    def development_mode(self) -> bool:
        """True when no callers are configured: every call is anonymous in `default`."""
        return not self._by_hash and not self._by_subject

    @property
    def uses_certificates(self) -> bool:
        """True when some caller is known by its client certificate's subject."""
        return bool(self._by_subject)

    def identify(self, metadata: Metadata, subject: str | None = None) -> Identity:
        """The caller of a call; UNAUTHENTICATED when callers are configured and it is none.

        `subject`: the call's verified client-certificate subject; by default the one
        CallerInterceptor noted for the call being served (PEER_SUBJECT).
        """
        if self.development_mode:
            return self._development
        token = _bearer_token(metadata)
        if token is not None:
            return self._by_token(token)
        if self._by_subject:
            subject = subject if subject is not None else PEER_SUBJECT.get()
            if subject is not None:
                identity = self._by_subject.get(normalize_subject(subject))
                if identity is None:
                    raise errors.UpstreamError(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"the client certificate ({subject[:200]}) is not a caller of this "
                        "gateway; send `authorization: Bearer <token>` or use a known "
                        "certificate",
                    )
                return identity
        raise errors.UpstreamError(
            grpc.StatusCode.UNAUTHENTICATED,
            "this gateway needs a caller token: send `authorization: Bearer <token>`"
            + (" or a known client certificate" if self._by_subject else ""),
        )

    def identify_call(self, context: Any) -> Identity:
        """identify() for a call's context: its metadata and its certificate's subject."""
        subject = peer_subject(context) if self._by_subject else None
        return self.identify(context.invocation_metadata() or (), subject)

    def _by_token(self, token: str) -> Identity:
        known = _CALL_TOKEN.get()
        if known is not None and known[0] is self and hmac.compare_digest(known[1], token):
            return known[2]
        identity = self._by_token_digest(token)
        _CALL_TOKEN.set((self, token, identity))
        return identity

    def _by_token_digest(self, token: str) -> Identity:
        digest = token_sha256(token)
        # A dict lookup by the digest, then a constant-time confirmation (module docstring).
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest.encode()):
            raise errors.UpstreamError(
                grpc.StatusCode.UNAUTHENTICATED, "the caller token is not known to this gateway"
            )
        return found[1]

    def check_upstream_key(self, metadata: Metadata) -> None:
        """In pass-through mode, UNAUTHENTICATED for a call without its own API key, unless
        `pass_through_fallback_to_gateway_key` lets the gateway's key stand in."""
        if self._requires_caller_key and not _has_api_key(metadata):
            raise errors.UpstreamError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this gateway sends each caller's own Gemini API key upstream (pass-through "
                "mode): send it as `x-goog-api-key` metadata",
            )

    def check_project(self, identity: Identity, project: str) -> None:
        """PERMISSION_DENIED unless `project` is the caller's own."""
        if project != identity.project:
            raise errors.UpstreamError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {identity.caller!r} may not read project {project!r}",
            )
