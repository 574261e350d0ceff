#!/usr/bin/env bash
# GPU check of the torch engine (visual side): parity vs CPU reference outputs + throughput at
# batch 1/8/64, fp32 and fp16 (eager and CUDA graphs) -> benchmarks/results/gpu_<card>.json.
#
# On the CPU machine first:   python benchmarks/gpu_reference.py     (writes benchmarks/gpu_bundle)
# Then on the GPU machine:    bash benchmarks/gpu_check.sh           (installs nothing)
# CPU smoke test of the same path:  bash benchmarks/gpu_check.sh --device cpu --batches 1 8 --runs 3
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${ML2P_GPU_BUNDLE:-benchmarks/gpu_bundle}"
if [ ! -f "$BUNDLE/reference.npz" ]; then
  echo "gpu_check: $BUNDLE/reference.npz is missing; run 'python benchmarks/gpu_reference.py'" \
       "on the CPU machine and carry $BUNDLE along with the repository" >&2
  exit 2
fi
PY="${PYTHON:-$(command -v python3 || command -v python)}"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" benchmarks/gpu_check.py --bundle "$BUNDLE" "$@"
