"""The GFLOPs convention every reported figure follows (manifest, responses, benchmarks)."""

from __future__ import annotations

CONVENTION = ("1 multiply-add = 2 FLOPs; counted from the exported graphs: Conv/MatMul/Gemm "
              "(attention matmuls included); elementwise ops, pooling and normalisation not "
              "included (given apart as elementwise_gflops)")


def scoring_gflops(groups: int, dim: int, n_labels: int) -> float:
    """Multiply-adds of `max_g <v_g, w>` for one image against `n_labels` labels."""
    return 2.0 * groups * dim * n_labels / 1e9
