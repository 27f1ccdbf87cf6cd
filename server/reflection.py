"""Server reflection under both of its names: grpc.reflection.v1 and grpc.reflection.v1alpha.

grpcio-reflection ships only the v1alpha service, while newer tools (grpcurl, buf curl with
`--reflect-protocol grpc-v1`) ask for v1 first. The two protocols' messages are the same
field for field, so one servicer answers both: v1 is a generic handler that reads and
writes the v1alpha message classes. The v1 file descriptor (the v1alpha one under the v1
package and file name) goes into the descriptor pool, so reflection can describe itself
under either name.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.reflection import SERVICE_NAME as V1ALPHA_SERVICE_NAME
from grpc_reflection.v1alpha.reflection import aio

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, built from the installed v1alpha descriptor."""
    v1alpha = reflection_pb2.DESCRIPTOR
    old, new = f".{v1alpha.package}.", f".{V1_PACKAGE}."
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_multiple_files = True
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    return proto


def _add_v1_descriptor(pool: DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)  # already there (a newer grpcio-reflection, or twice)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor().SerializeToString())


def enable_server_reflection(
    service_names: Iterable[str], server: grpc.aio.Server, pool: DescriptorPool | None = None
) -> None:
    """Serve reflection of `service_names` (plus both reflection services) on `server`."""
    pool = pool or descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = aio.ReflectionServicer([*service_names, *SERVICE_NAMES], pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    v1_service = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME, {"ServerReflectionInfo": v1_handler}
    )
    server.add_generic_rpc_handlers([v1_service])
