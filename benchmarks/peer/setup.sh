#!/usr/bin/env bash
# Virtual environment for the serving peer (NVIDIA Triton through nvidia-pytriton), apart from
# the project's venv: pytriton pins numpy<2 / grpcio-tools that clash with the project's pins.
# Usage: benchmarks/peer/setup.sh [VENV]   (default ~/.cache/ml2p/peer-venv)
set -euo pipefail
VENV="${1:-$HOME/.cache/ml2p/peer-venv}"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "nvidia-pytriton" "onnxruntime" "pillow" "simplejpeg" "httpx"
"$VENV/bin/python" - <<'PY'
import sysconfig, pytriton, onnxruntime
print("pytriton", getattr(pytriton, "__version__", "?"), "onnxruntime", onnxruntime.__version__)
print("LIBDIR", sysconfig.get_config_var("LIBDIR"))
PY
