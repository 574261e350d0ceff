"""The wire form of stored image vectors (`/v1/embed`, `/v1/score`, gRPC `Embed` / `Score`):
each image's [G, D] array as its shape, a dtype (float16 or float32) and the little-endian
bytes (base64 in JSON, raw bytes in protobuf). One reader and one writer for both protocols."""

from __future__ import annotations

import numpy as np

from service.errors import InvalidRequest

DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def vector_bytes(vectors: np.ndarray, dtype: str) -> tuple[list[int], bytes]:
    """One image's vectors [G, D] → (shape, little-endian bytes of `dtype`)."""
    return list(vectors.shape), np.ascontiguousarray(vectors, DTYPES[dtype]).tobytes()


def read_vectors(items: list[tuple[list[int], str, bytes]], field: str = "embeddings"
                 ) -> np.ndarray:
    """(shape, dtype, bytes) per image → float32 [N, G, D]; 422 naming the item at fault."""
    if not items:
        raise InvalidRequest("no vectors: send the embeddings /v1/embed returned", field=field)
    arrays = []
    for i, (shape, dtype, data) in enumerate(items):
        where = f"{field}[{i}]"
        if dtype not in DTYPES:
            raise InvalidRequest(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}",
                                 field=f"{where}.dtype")
        shape = [int(n) for n in shape]
        if len(shape) != 2 or min(shape) < 1:
            raise InvalidRequest(f"shape {shape}: expected [G, D]", field=f"{where}.shape")
        expected = shape[0] * shape[1] * DTYPES[dtype].itemsize
        if len(data) != expected:
            raise InvalidRequest(f"{len(data)} bytes, but shape {shape} of {dtype} needs "
                                 f"{expected}", field=f"{where}.data")
        arrays.append(np.frombuffer(data, DTYPES[dtype]).reshape(shape))
    if len({a.shape for a in arrays}) > 1:
        raise InvalidRequest("the vector sets differ in shape: one model's embeddings only",
                             field=field)
    return np.stack(arrays).astype(np.float32)
