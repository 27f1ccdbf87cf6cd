"""Who is calling: the caller and project behind a gRPC call, and their default labels.

Callers present a bearer token (`authorization: Bearer <token>` metadata); the configuration
holds only the token's SHA-256, so neither the config file nor memory dumps give tokens away.
With no callers configured every call belongs to project `default`, caller `anonymous`
(development mode).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import grpc

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings

DEFAULT_PROJECT = "default"
ANONYMOUS = "anonymous"
# A call's metadata as grpc.aio gives it (grpc.aio.Metadata or a tuple of pairs).
Metadata = Collection[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Identity:
    """A caller, its project, and the labels its generate calls get unless they set them."""

    project: str
    caller: str
    default_labels: Mapping[str, str] = field(default_factory=dict)


def token_sha256(token: str) -> str:
    """What the configuration stores for a caller's token (`callers[].token_sha256`)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer_token(metadata: Metadata) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class CallerDirectory:
    """Resolves the identity of each call from the configured projects and callers."""

    def __init__(self, settings: Settings) -> None:
        gateway_defaults = dict(settings.default_labels)
        self._by_hash: dict[str, Identity] = {}
        for project_name, project in settings.projects.items():
            for caller in project.callers:
                digest = caller.token_sha256.lower()
                if digest in self._by_hash:
                    raise ValueError(
                        f"projects.{project_name}: caller {caller.name!r} has the same token "
                        f"as {self._by_hash[digest].caller!r}"
                    )
                labels = {**gateway_defaults, **project.default_labels, **caller.default_labels}
                self._by_hash[digest] = Identity(project_name, caller.name, labels)
        self._development = Identity(DEFAULT_PROJECT, ANONYMOUS, gateway_defaults)

    @property
    def development_mode(self) -> bool:
        """True when no callers are configured: every call is anonymous in `default`."""
        return not self._by_hash

    def identify(self, metadata: Metadata) -> Identity:
        """The caller of a call; UNAUTHENTICATED when callers are configured and it is none."""
        if not self._by_hash:
            return self._development
        token = _bearer_token(metadata)
        if token is None:
            raise errors.UpstreamError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this gateway needs a caller token: send `authorization: Bearer <token>`",
            )
        # Looked up by the token's SHA-256: timing can tell at most how much of a hash
        # matched, which says nothing about the token itself.
        identity = self._by_hash.get(token_sha256(token))
        if identity is None:
            raise errors.UpstreamError(
                grpc.StatusCode.UNAUTHENTICATED, "the caller token is not known to this gateway"
            )
        return identity

    def check_project(self, identity: Identity, project: str) -> None:
        """PERMISSION_DENIED unless `project` is the caller's own."""
        if project != identity.project:
            raise errors.UpstreamError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {identity.caller!r} may not read project {project!r}",
            )
