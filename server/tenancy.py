"""Tenancy: who may call the gateway, and which project's callers may use which resources.

Two pieces, both idle in development mode (no callers configured: every call is the
`default` project's, see identity.py):

- `CallerInterceptor` authenticates every call before its handler runs: UNAUTHENTICATED
  without a known token or client certificate, except for health and reflection while
  `open_health` / `open_reflection` say they are open. The handlers identify the caller
  again for its project (a dict lookup); the interceptor makes the rule hold for every
  service, including those that have no caller of their own (health, reflection), and
  notes the call's client-certificate subject for the handlers (identity.PEER_SUBJECT).
- `Tenancy` keeps upstream resources apart. The upstream sees one owner for all of them,
  the gateway's API key, so the gateway records the project that created each tuned model
  and batch (store/tenancy.py) and, on every forwarded call naming one (its path fields,
  e.g. `tunedModels/x`, `tunedModels/x/operations/y`, `batches/y`, and the source model of
  CreateTunedModel), refuses other projects' callers with PERMISSION_DENIED before anything
  is sent. Lists of them (ListTunedModels, ListOperations on `batches`) show only the
  caller's own (`list_visible`).

Resources of no known project (made before the gateway recorded owners, in development mode,
or outside the gateway) may be used by the project `unowned_resources_project` names, and
by no other: in production, a model tuned on one tenant's data must not answer another's
prompts just because nobody recorded where it came from. A name that does not exist has no
owner either, so its use is PERMISSION_DENIED too, as Google's APIs answer for resources a
caller may not see: existence is not revealed.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health

from gemini_gateway.server import errors, reflection
from gemini_gateway.server.config import Settings
from gemini_gateway.server.identity import PEER_SUBJECT, CallerDirectory, Identity, peer_subject
from gemini_gateway.server.routes import Route
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.tenancy import owners_of, record_owner

log = logging.getLogger(__name__)

# Collections whose members the gateway keeps per project: `tunedModels/{id}`, `batches/{id}`.
OWNED_COLLECTIONS = frozenset({"tunedModels", "batches"})
# Methods that create one; the name comes from the operation they answer.
CREATING_METHODS = frozenset(
    {
        "/google.ai.generativelanguage.v1beta.ModelService/CreateTunedModel",
        "/google.ai.generativelanguage.v1beta.GenerativeService/BatchGenerateContent",
    }
)
# Request fields naming a resource besides those in the path (a model to tune from).
EXTRA_NAME_FIELDS: dict[str, tuple[str, ...]] = {
    "google.ai.generativelanguage.v1beta.CreateTunedModelRequest": (
        "tuned_model.tuned_model_source.tuned_model",
    ),
}
LIST_TUNED_MODELS = "/google.ai.generativelanguage.v1beta.ModelService/ListTunedModels"
LIST_OPERATIONS = "/google.longrunning.Operations/ListOperations"

# Listing: a page holds at most page_size of the caller's items (DEFAULT_PAGE_SIZE when
# unset, at most MAX_PAGE_SIZE, as ListTunedModels). To fill it the gateway reads upstream
# pages of UPSTREAM_PAGE_SIZE items (or page_size, when larger), MAX_UPSTREAM_PAGES at most
# per call; a page may then hold fewer items than asked, even none, with a next_page_token
# to go on from (AIP-158 allows it).
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
UPSTREAM_PAGE_SIZE = 100
MAX_UPSTREAM_PAGES = 10
PAGE_TOKEN_PREFIX = "gw1."

# Services that need no caller while the settings keep them open.
HEALTH_SERVICES = frozenset({health.SERVICE_NAME})
REFLECTION_SERVICES = frozenset(reflection.SERVICE_NAMES)


def owned_name(name: str) -> str | None:
    """The owned resource a name is or lies under (`tunedModels/x` for
    `tunedModels/x/operations/y`), or None when it names no owned collection's member."""
    collection, _, rest = name.partition("/")
    if collection not in OWNED_COLLECTIONS:
        return None
    member = rest.split("/", 1)[0].split(":", 1)[0]
    return f"{collection}/{member}" if member else None


def _value(request: Message, dotted: str) -> str:
    value: Any = request
    for part in dotted.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


def _encode_token(upstream_token: str, skip: int, size: int) -> str:
    text = json.dumps([upstream_token, skip, size], separators=(",", ":"))
    return PAGE_TOKEN_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, int, int | None]:
    """(upstream token, items of its page already given, upstream page size) of a token
    list_visible issued; ("", 0, None) for none."""
    if not token:
        return "", 0, None
    bad = errors.invalid_argument(
        "is not a page token this gateway issued for this list", field="page_token"
    )
    if not token.startswith(PAGE_TOKEN_PREFIX):
        raise bad
    encoded = token[len(PAGE_TOKEN_PREFIX) :]
    try:
        upstream, skip, size = json.loads(
            base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        )
    except (ValueError, TypeError, binascii.Error):
        raise bad from None
    valid = (
        isinstance(upstream, str)
        and isinstance(skip, int)
        and isinstance(size, int)
        and 0 <= skip < size <= MAX_PAGE_SIZE
    )
    if not valid:
        raise bad
    return upstream, skip, size


class Tenancy:
    """Per-project ownership of tuned models and batches (see the module docstring)."""

    def __init__(
        self, store: Store, callers: CallerDirectory, unowned_project: str | None = None
    ) -> None:
        self._store = store
        self._callers = callers
        self._unowned_project = unowned_project
        self._name_fields: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_settings(cls, store: Store, callers: CallerDirectory, settings: Settings) -> Tenancy:
        return cls(store, callers, settings.unowned_resources_project)

    @property
    def active(self) -> bool:
        """Off in development mode: every call is the one `default` project's."""
        return not self._callers.development_mode

    def _fields(self, route: Route) -> tuple[str, ...]:
        fields = self._name_fields.get(route.full_method)
        if fields is None:
            found = dict.fromkeys(var for binding in route.bindings for var in binding.variables)
            found.update(
                dict.fromkeys(EXTRA_NAME_FIELDS.get(route.method.input_type.full_name, ()))
            )
            fields = self._name_fields[route.full_method] = tuple(found)
        return fields

    def names(self, route: Route, request: Message) -> set[str]:
        """The owned resources a request of `route` names."""
        found = set()
        for dotted in self._fields(route):
            name = owned_name(_value(request, dotted))
            if name is not None:
                found.add(name)
        return found

    def may_use(self, identity: Identity, owner: str | None) -> bool:
        if owner is None:
            return self._unowned_project is not None and identity.project == self._unowned_project
        return owner == identity.project

    async def authorize(self, identity: Identity, route: Route, request: Message) -> None:
        """PERMISSION_DENIED unless every owned resource the request names is the caller
        project's (or, with no owner, the caller is of unowned_resources_project)."""
        if not self.active:
            return
        names = self.names(route, request)
        if not names:
            return
        owners = await owners_of(self._store, names)
        for name in sorted(names):
            if not self.may_use(identity, owners.get(name)):
                raise errors.UpstreamError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"caller {identity.caller!r} may not use {name}: it is not a resource "
                    f"of project {identity.project!r}",
                )

    async def created(self, identity: Identity, route: Route, response: Message) -> None:
        """Record the caller's project as the owner of what a creating call made.

        A failure to record is logged, not answered: the upstream made the resource, and a
        caller told otherwise might make another. The resource is then unowned (module
        docstring) until an operator records it.
        """
        if not self.active or route.full_method not in CREATING_METHODS:
            return
        name = owned_name(getattr(response, "name", "") or "")
        if name is None:
            return
        try:
            await record_owner(self._store, name, identity.project, identity.caller)
        except Exception:
            log.exception("could not record project %s as the owner of %s", identity.project, name)

    def lists(self, route: Route, request: Message) -> bool:
        """Whether answers of this call are lists of owned resources to filter."""
        if not self.active:
            return False
        if route.full_method == LIST_TUNED_MODELS:
            return True
        return route.full_method == LIST_OPERATIONS and _value(request, "name") == "batches"

    async def list_visible(
        self,
        identity: Identity,
        route: Route,
        request: Message,
        fetch: Callable[[Message], Awaitable[Message]],
    ) -> Message:
        """One page of the caller's own items of an upstream list (see the constants above).

        `fetch` sends one upstream list request. The page token the caller gets names the
        upstream page to read next and how many of its items were already given.
        """
        items_field = "tuned_models" if route.full_method == LIST_TUNED_MODELS else "operations"
        page_token, skip, upstream_size = _decode_token(_value(request, "page_token"))
        asked = getattr(request, "page_size", 0)
        wanted = min(asked if asked > 0 else DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        size = upstream_size or min(max(wanted, UPSTREAM_PAGE_SIZE), MAX_PAGE_SIZE)
        kept: list[Message] = []
        next_token = ""
        for _ in range(MAX_UPSTREAM_PAGES):
            upstream_request = type(request)()
            upstream_request.CopyFrom(request)
            upstream_request.page_token = page_token  # type: ignore[attr-defined]
            upstream_request.page_size = size  # type: ignore[attr-defined]
            answer = await fetch(upstream_request)
            items = list(getattr(answer, items_field))
            owners = await owners_of(self._store, self._item_names(items[skip:]))
            stopped_at = None
            for index in range(skip, len(items)):
                name = owned_name(items[index].name)  # type: ignore[attr-defined]
                if name is not None and self.may_use(identity, owners.get(name)):
                    kept.append(items[index])
                    if len(kept) == wanted:
                        stopped_at = index + 1
                        break
            following = answer.next_page_token  # type: ignore[attr-defined]
            if stopped_at is not None and stopped_at < len(items):
                next_token = _encode_token(page_token, stopped_at, size)
                break
            if not following:  # the last upstream page, read to its end
                next_token = ""
                break
            page_token, skip = following, 0
            next_token = _encode_token(page_token, 0, size)
            if stopped_at is not None:
                break
        response = route.response_class()
        getattr(response, items_field).extend(kept)
        response.next_page_token = next_token  # type: ignore[attr-defined]
        return response

    @staticmethod
    def _item_names(items: Iterable[Message]) -> set[str]:
        names = set()
        for item in items:
            name = owned_name(item.name)  # type: ignore[attr-defined]
            if name is not None:
                names.add(name)
        return names


# --- authentication of every call -------------------------------------------------------------

Behaviour = Callable[..., Any]


def _refusing(handler: Any, error: errors.UpstreamError) -> Any:
    """`handler` with its behaviour replaced by one that ends the call with `error` (and
    decodes nothing)."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await error.abort(context)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await error.abort(context)
        yield  # an async generator, as the behaviour it replaces  # pragma: no cover

    for kind in ("unary_unary", "stream_unary", "unary_stream", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            replacement = refuse_stream if inspect.isasyncgenfunction(behaviour) else refuse
            return handler._replace(request_deserializer=None, **{kind: replacement})
    return handler


def _with_subject(behaviour: Behaviour, check: Callable[[Any], object] | None) -> Behaviour:
    """`behaviour` run with the call's certificate subject noted (PEER_SUBJECT), after
    `check` (which raises UpstreamError to refuse the call), when given."""
    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = PEER_SUBJECT.set(peer_subject(context))
            try:
                if check is not None:
                    try:
                        check(context)
                    except errors.UpstreamError as exc:
                        await exc.abort(context)
                async for response in behaviour(request, context):
                    yield response
            finally:
                PEER_SUBJECT.reset(token)

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = PEER_SUBJECT.set(peer_subject(context))
        try:
            if check is not None:
                try:
                    check(context)
                except errors.UpstreamError as exc:
                    await exc.abort(context)
            return await behaviour(request, context)
        finally:
            PEER_SUBJECT.reset(token)

    return unary


class CallerInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for any call without a known caller, except to open services.

    Without certificate callers the check reads only the call's metadata, before the
    handler is chosen: a call that passes runs its handler unchanged (no per-call cost
    beyond one token lookup). With them, each behaviour is wrapped to read the verified
    subject from the call's auth context and note it in PEER_SUBJECT for the handler.
    Place it after the MetricsInterceptor (so refusals are counted as UNAUTHENTICATED) and
    before validation.RequestDecodingInterceptor (so nothing is decoded for a stranger).
    """

    def __init__(self, callers: CallerDirectory, open_services: Iterable[str] = ()) -> None:
        self._callers = callers
        self._open = frozenset(open_services)

    @classmethod
    def from_settings(cls, callers: CallerDirectory, settings: Settings) -> CallerInterceptor:
        open_services: set[str] = set()
        if settings.open_health:
            open_services |= HEALTH_SERVICES
        if settings.open_reflection:
            open_services |= REFLECTION_SERVICES
        return cls(callers, open_services)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None or self._callers.development_mode:
            return handler
        service = handler_call_details.method.lstrip("/").partition("/")[0]
        is_open = service in self._open
        if not self._callers.uses_certificates:
            if is_open:
                return handler
            try:
                self._callers.identify(handler_call_details.invocation_metadata or ())
            except errors.UpstreamError as exc:
                return _refusing(handler, exc)
            return handler
        check = None if is_open else self._callers.identify_call
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: _with_subject(behaviour, check)})
        return handler
