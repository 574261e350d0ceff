"""Builds ml2p-client with its gRPC stubs: protoc (grpcio-tools, a build requirement only) runs
on the repository's proto/tagger.proto into ml2p_client/_generated/ before setuptools looks at
the packages, with the proto's SHA-256 beside them (the server checks it against its proto).
From an sdist, which carries the generated files and no proto, nothing is generated."""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PROTO = HERE.parents[1] / "proto" / "tagger.proto"
OUT = HERE / "ml2p_client" / "_generated"


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    if not PROTO.is_file():
        raise RuntimeError(f"{PROTO} not found: build the client from the repository")
    OUT.mkdir(exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{include}",
                        f"--python_out={OUT}", f"--grpc_python_out={OUT}", f"--pyi_out={OUT}",
                        str(PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
    stub = OUT / "tagger_pb2_grpc.py"
    # protoc writes a top-level import; inside a package it must be relative
    stub.write_text(stub.read_text().replace("import tagger_pb2 as", "from . import tagger_pb2 as"))
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()
    (OUT / "__init__.py").write_text(f'"""Generated from proto/tagger.proto when the wheel was '
                                     f'built; do not edit."""\n\nPROTO_SHA256 = "{digest}"\n')


if PROTO.is_file():
    generate_stubs()
setup()
