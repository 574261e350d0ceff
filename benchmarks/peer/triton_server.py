"""The peer of `ml2p bench serve-compare`: NVIDIA Triton (via nvidia-pytriton) on the CPU.

Runs in the peer virtual environment (benchmarks/peer/setup.sh), not the project's. Serves
model `tagger`: input `image` (BYTES, one encoded image per request), output `scores`
(FP32 [L], one score per candidate label). Triton's dynamic batcher groups requests; the
bound Python function decodes + preprocesses each image with the project's own
`artifact.imaging` (numpy + Pillow only; the driver puts the checkout on PYTHONPATH), runs the
artifact's `visual.onnx` in ONNX Runtime on the whole batch and scores against a label matrix
the driver encoded with the project's engine (`--label-matrix`, .npy [L, D]: the labels are
fixed for the run, like a warm cache).

Needs LD_LIBRARY_PATH to start with this interpreter's sysconfig LIBDIR (the Python backend
stub must link the same libpython); the driver sets it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from artifact.imaging import Preprocessing, decode_image, preprocess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="ml2p artifact dir")
    parser.add_argument("--label-matrix", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()

    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    manifest = json.loads((Path(args.model) / "manifest.json").read_text())
    section = manifest["preprocessing"]  # read without pydantic, which this venv lacks
    spec = Preprocessing(size=int(section["size"]), mean=tuple(section["mean"]),
                         std=tuple(section["std"]))
    visual_file = manifest.get("files", {}).get("visual", "visual.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # as the service's engine is configured by default: spinning intra-op threads would take
    # CPU from decoding on 2 cores
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(Path(args.model) / visual_file), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    matrix = np.load(args.label_matrix).astype(np.float32)

    @batch
    def infer(image: np.ndarray) -> dict:
        pixels = np.stack([
            preprocess(decode_image(bytes(row[0]), target_size=spec.size), spec)
            for row in image])
        groups = session.run([output_name], {input_name: pixels})[0]
        return {"scores": np.matmul(groups, matrix.T).max(axis=1).astype(np.float32)}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, allow_metrics=True,
                          http_address="127.0.0.1", grpc_address="127.0.0.1")
    with Triton(config=config) as triton:
        triton.bind(
            model_name="tagger", infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="scores", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=DynamicBatcher(
                max_queue_delay_microseconds=args.max_queue_delay_us)),
            strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
