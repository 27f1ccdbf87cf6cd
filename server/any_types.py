"""Type URLs of `google.protobuf.Any` values that Google's REST answers name in an internal package.

The Batch API's operations carry their metadata and response as Any values typed
`type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch` (and
`...Output`): a package no public proto declares, so no descriptor pool can parse them. The
messages are the public v1beta ones under another package name, so before an answer is parsed
each such type URL is rewritten to its v1beta twin. A v1main type without a v1beta twin in the
gateway's protos becomes a `google.protobuf.Struct` holding the same JSON: the answer still
parses, and nothing of it is lost.

Rewriting walks the whole JSON tree, so callers only call it for answers whose text mentions
`v1main` (`mentions_internal_types`): every other answer costs one substring search.
"""

from __future__ import annotations

from typing import Any

TYPE_URL_PREFIX = "type.googleapis.com/"
INTERNAL_PACKAGE = "google.ai.generativelanguage.v1main."
PUBLIC_PACKAGE = "google.ai.generativelanguage.v1beta."
MARKER = "v1main"

# v1main messages whose v1beta message of the same name the gateway's protos declare.
V1BETA_TWINS = frozenset(
    {
        "GenerateContentBatch",
        "GenerateContentBatchOutput",
    }
)

_INTERNAL_URL = TYPE_URL_PREFIX + INTERNAL_PACKAGE
_STRUCT_URL = TYPE_URL_PREFIX + "google.protobuf.Struct"


def mentions_internal_types(raw: str | bytes) -> bool:
    """Whether an answer's text may hold a v1main type URL (and so needs normalize_any_types)."""
    if isinstance(raw, bytes):
        return MARKER.encode() in raw
    return MARKER in raw


def public_type_url(type_url: str) -> str | None:
    """The v1beta type URL for a v1main one that has a twin; None for any other URL."""
    if not type_url.startswith(_INTERNAL_URL):
        return None
    name = type_url[len(_INTERNAL_URL) :]
    return TYPE_URL_PREFIX + PUBLIC_PACKAGE + name if name in V1BETA_TWINS else None


def normalize_any_types(payload: object) -> object:
    """`payload` (parsed JSON) with every v1main `@type` made parsable, rewritten in place.

    Returns the same object (a new one only when the top level itself is an Any that has to
    become a Struct).
    """
    return _normalize(payload)


def _normalize(node: Any) -> Any:
    if isinstance(node, list):
        for index, item in enumerate(node):
            node[index] = _normalize(item)
        return node
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        if isinstance(value, dict | list):
            node[key] = _normalize(value)
    type_url = node.get("@type")
    if not isinstance(type_url, str) or not type_url.startswith(_INTERNAL_URL):
        return node
    public = public_type_url(type_url)
    if public is not None:
        node["@type"] = public
        return node
    # No twin: keep the fields as a Struct (the Any's JSON form of a Struct is `value`).
    fields = {key: value for key, value in node.items() if key != "@type"}
    return {"@type": _STRUCT_URL, "value": fields}
