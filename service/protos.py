"""The gRPC stubs of `proto/tagger.proto`: generated into the ml2p-client wheel when it is
built (`clients/python`, `make client`) and imported from the installed client, so that one
process never holds two copies of `ml2p.v1` (protobuf's descriptor pool refuses that).

`make install` builds and installs the client; after a change to the proto, `make proto`
does it again. `load()` refuses stubs generated from another version of the proto.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).resolve().parents[1] / "proto" / "tagger.proto"


def load() -> tuple[ModuleType, ModuleType]:
    """(tagger_pb2, tagger_pb2_grpc) from the installed ml2p-client."""
    try:
        from ml2p_client._generated import PROTO_SHA256, tagger_pb2, tagger_pb2_grpc
    except ImportError:
        raise RuntimeError("the gRPC stubs come with the ml2p-client package, which is not "
                           "installed: `make install` (or `make proto`)") from None
    if PROTO.is_file() and hashlib.sha256(PROTO.read_bytes()).hexdigest() != PROTO_SHA256:
        raise RuntimeError(f"the installed ml2p-client's stubs were generated from another "
                           f"version of {PROTO}: run `make proto`")
    return tagger_pb2, tagger_pb2_grpc
