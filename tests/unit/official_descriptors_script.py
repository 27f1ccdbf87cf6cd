"""Prints what Google's published v1beta and v1 APIs declare, as JSON.

Run in a subprocess by test_wire_compat.py (the official package and generated/ define the
same message names and cannot share one process). Reads from stdin a JSON object naming
`messages`, `enums` and `services` by full name; answers, for each, its fields, its values,
or its methods (call kind, request and response types, http bindings), or null when the
published API has no such thing.

Services come from the official client's transports: the gRPC transport says each
method's path, kind and types; the REST transport lists its http bindings.
"""

import importlib
import json
import re
import sys
from importlib import resources

import grpc
from google.ai import (  # noqa: F401 - importing registers the messages
    generativelanguage_v1,
    generativelanguage_v1beta,
)
from google.protobuf import descriptor_pool

POOL = descriptor_pool.Default()


def describe_message(full_name: str) -> dict | None:
    try:
        message = POOL.FindMessageTypeByName(full_name)
    except KeyError:
        return None
    return {
        field.number: {
            "name": field.name.rstrip("_"),
            "type": field.type,
            "type_name": (field.message_type or field.enum_type).full_name
            if (field.message_type or field.enum_type)
            else "",
            "repeated": field.is_repeated,
            "json_name": field.json_name,
            "oneof": field.containing_oneof.name.rstrip("_")
            if field.containing_oneof and not field.containing_oneof.name.startswith("_")
            else "",
            "presence": field.has_presence,
        }
        for field in message.fields
    }


def describe_enum(full_name: str) -> dict | None:
    try:
        enum = POOL.FindEnumTypeByName(full_name)
    except KeyError:
        return None
    return {value.number: value.name for value in enum.values}


def _recorder(kind: str):
    def make_stub(self, path, request_serializer=None, response_deserializer=None, **_):
        self.stubs[path] = {"kind": kind, "types": (request_serializer, response_deserializer)}

    return make_stub


class RecordingChannel:
    """Stands in for the transport's channel and notes each stub it is asked to make."""

    def __init__(self) -> None:
        self.stubs: dict[str, dict] = {}

    unary_unary = _recorder("unary_unary")
    unary_stream = _recorder("unary_stream")
    stream_unary = _recorder("stream_unary")
    stream_stream = _recorder("stream_stream")


def _full_name(serializer) -> str:
    """The message a stub's (de)serializer is a method of: a proto-plus class's or a pb2's."""
    owner = getattr(serializer, "__self__", None) or getattr(serializer, "__objclass__", None)
    pb = owner.pb() if hasattr(owner, "pb") else owner
    return pb.DESCRIPTOR.full_name


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def describe_service(full_name: str) -> dict | None:
    package, _, service = full_name.rpartition(".")
    try:
        library = importlib.import_module(
            package.replace("generativelanguage.", "generativelanguage_")
        )
    except ImportError:
        return None
    metadata = json.loads(resources.files(library).joinpath("gapic_metadata.json").read_text())
    if service not in metadata["services"]:
        return None
    rpcs = metadata["services"][service]["clients"]["grpc"]["rpcs"]
    transports = importlib.import_module(
        f"{library.__name__}.services.{_snake(service)}.transports"
    )
    rest = getattr(importlib.import_module(f"{transports.__name__}.rest_base"),
                   f"_Base{service}RestTransport")  # fmt: skip
    transport = getattr(transports, f"{service}GrpcTransport")(
        channel=grpc.insecure_channel("127.0.0.1:9")  # never connected
    )
    channel = RecordingChannel()
    transport._stubs.clear()
    transport._logged_channel = channel
    methods = {}
    for method, client in rpcs.items():
        getattr(transport, client["methods"][0])  # the method's property makes its stub
        stub = channel.stubs[f"/{full_name}/{method}"]
        request_serializer, response_deserializer = stub["types"]
        # Methods without an http rule (bidirectional streams) have no REST counterpart.
        http_options = getattr(getattr(rest, f"_Base{method}", None), "_get_http_options", None)
        options = http_options() if http_options else []
        methods[method] = {
            "kind": stub["kind"],
            "input": _full_name(request_serializer),
            "output": _full_name(response_deserializer),
            "http": [[o["method"], o["uri"], o.get("body", "")] for o in options],
        }
    return methods


request = json.load(sys.stdin)
print(
    json.dumps(
        {
            "messages": {name: describe_message(name) for name in request["messages"]},
            "enums": {name: describe_enum(name) for name in request["enums"]},
            "services": {name: describe_service(name) for name in request["services"]},
        }
    )
)
