"""grpc.reflection.v1's descriptor: the v1alpha one under the v1 names, nothing else changed."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from gemini_gateway.server.reflection import V1_FILE, V1_SERVICE_NAME, v1_file_descriptor


def test_v1_descriptor_renames_every_reference() -> None:
    proto = v1_file_descriptor()
    assert (proto.name, proto.package) == (V1_FILE, "grpc.reflection.v1")
    assert "v1alpha" not in str(proto).replace("grpc_reflection_v1alpha", "")


def test_v1_messages_are_the_v1alpha_messages_field_for_field() -> None:
    v1alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    v1 = v1_file_descriptor()

    def shape(proto: descriptor_pb2.FileDescriptorProto) -> list:
        return [
            (m.name, [(f.name, f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1],
                       f.oneof_index if f.HasField("oneof_index") else None) for f in m.field])
            for m in proto.message_type
        ]  # fmt: skip

    assert shape(v1) == shape(v1alpha)
    assert len(v1.message_type) == len(v1alpha.message_type) > 5


def test_v1_descriptor_builds_in_a_fresh_pool() -> None:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(v1_file_descriptor().SerializeToString())
    service = pool.FindServiceByName(V1_SERVICE_NAME)
    (method,) = service.methods
    assert method.name == "ServerReflectionInfo"
    assert method.client_streaming and method.server_streaming
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
