"""Regenerate generated/ from protos/ (run as `make generate`).

Steps:
1. Link the .proto sources that googleapis-common-protos installs (google/api, rpc,
   longrunning, type) into the git-ignored third_party/ so protoc and buf can import them
   without any network access.
2. Run protoc (grpcio-tools) for Python messages, gRPC stubs and .pyi type stubs.
3. Rewrite imports of our own protos to live under `gemini_gateway.generated`: the official
   google-ai-generativelanguage package installs a regular `google.ai.generativelanguage`
   package that would shadow a namespace package of the same name.
4. Put a "DO NOT EDIT" header on every file, add __init__.py files and the PEP 561 marker,
   and copy the .proto sources and service configs beside the stubs (they ship with them).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party"
OUT = ROOT / "generated"

# Our own proto packages, whose generated imports are rewritten under IMPORT_ROOT.
OWN_PACKAGES = ("google.ai.generativelanguage", "gemini.gateway")
IMPORT_ROOT = "gemini_gateway.generated"
HEADER = "# Generated file. DO NOT EDIT. Regenerate with `make generate`.\n"
PROTO_HEADER = "// Generated copy of protos/. DO NOT EDIT. Regenerate with `make generate`.\n"
COMMON_PROTO_DIRS = ("api", "rpc", "longrunning", "type")


def link_third_party() -> None:
    """Expose the installed googleapis-common-protos .proto files under third_party/."""
    installed_google = Path(next(iter(google.api.__path__))).parent
    for name in COMMON_PROTO_DIRS:
        target = THIRD_PARTY / "google" / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for proto in (installed_google / name).glob("*.proto"):
            # The package ships google/longrunning/operations.proto as operations_proto.proto.
            dest = "operations.proto" if proto.name == "operations_proto.proto" else proto.name
            (target / dest).symlink_to(proto)


def _plugin(name: str) -> str:
    """A protoc plugin installed beside this interpreter (mypy-protobuf's, in the venv)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: install the dev extra (`make venv`)")
    return found


def run_protoc() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--mypy_out={OUT}",
        f"--grpc_python_out={OUT}",
        # Typed messages and gRPC stubs (.pyi) from mypy-protobuf.
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_grpc_out={OUT}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


_IMPORT = re.compile(
    r"^(from|import) (" + "|".join(re.escape(p) for p in OWN_PACKAGES) + r")\b", re.MULTILINE
)


def rewrite_and_mark() -> None:
    for path in sorted(OUT.rglob("*.py*")):
        text = _IMPORT.sub(rf"\1 {IMPORT_ROOT}.\2", path.read_text())
        path.write_text(HEADER + text)
    for directory in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text(HEADER)
    (OUT / "py.typed").write_text("")


def copy_sources() -> None:
    """The .proto sources and service configs travel with the stubs.

    The server reads the configs' http rules at start-up; a client of the slim distribution
    gets the .proto files its other tools (proto-loader, buf, grpcurl) need.
    """
    for source in PROTOS.rglob("*.yaml"):
        target = OUT / source.relative_to(PROTOS)
        target.write_text(HEADER + source.read_text())
    for source in PROTOS.rglob("*.proto"):
        target = OUT / source.relative_to(PROTOS)
        target.write_text(PROTO_HEADER + source.read_text())


def main() -> None:
    link_third_party()
    run_protoc()
    rewrite_and_mark()
    copy_sources()
    print(f"generated {sum(1 for _ in OUT.rglob('*_pb2*.py*'))} files in {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
