"""Prints the descriptors of Google's published v1beta messages as JSON.

Run in a subprocess by test_wire_compat.py (the official package and generated/ define the
same message names and cannot share one process). Reads message full names from stdin.
"""

import json
import sys

import google.ai.generativelanguage_v1beta  # noqa: F401 - registers the messages
from google.protobuf import descriptor_pool


def describe(full_name: str) -> dict | None:
    try:
        message = descriptor_pool.Default().FindMessageTypeByName(full_name)
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
        }
        for field in message.fields
    }


print(json.dumps({name: describe(name) for name in sys.stdin.read().split()}))
