#!/bin/bash
# Opt-in: the "honest peer" of `lasp bench train --compare-pytorch` (issue 29), current PyTorch at its best on
# the CPU. Installs into the project's virtual environment .venv-peer (ignored by git; CI does not run this):
#   - torch, the newest release: from PyTorch's CPU-only index (download.pytorch.org/whl/cpu) when it answers
#     within 5 s, else PyPI's plain `torch`, whose Linux wheel also pulls the CUDA runtime wheels (nvidia-*,
#     triton; several GB, unused here: the peer runs on the CPU)
#   - numpy
# The environment is made from Debian's /usr/bin/python3 (python3-venv's ensurepip; torch.compile also needs
# g++ and the Python headers, python3-dev). Debian's python3-torch (/usr/bin/python3) stays the reference of
# the test suite; this environment serves only the comparison.
# Then: `lasp bench train --compare-pytorch` takes .venv-peer/bin/python by itself (its JSON names the
# interpreter, torch version, BLAS, and eager and torch.compile timings), and
#   .venv-peer/bin/python tools/reference.py peer-selftest
# checks the peer's model against the float64 reference (loss and every gradient) and that it compiles.
# Usage: scripts/setup_peer.sh [VENV_DIR]   (default: .venv-peer at the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv-peer}

if [ ! -x "$venv/bin/python" ]; then
  echo "setup_peer: creating $venv from /usr/bin/python3"
  /usr/bin/python3 -m venv "$venv"
fi
if curl -s -o /dev/null --max-time 5 https://download.pytorch.org/whl/cpu/torch/; then
  echo "setup_peer: torch from the CPU-only index (download.pytorch.org/whl/cpu)"
  "$venv/bin/pip" install --upgrade torch --index-url https://download.pytorch.org/whl/cpu
else
  echo "setup_peer: download.pytorch.org does not answer; torch from PyPI (with its CUDA wheels, unused)"
  "$venv/bin/pip" install --upgrade torch
fi
"$venv/bin/pip" install --upgrade numpy
"$venv/bin/python" - <<'EOF'
import torch
print(f"setup_peer: torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}")
EOF
echo "setup_peer: check it with: $venv/bin/python $root/tools/reference.py peer-selftest"
