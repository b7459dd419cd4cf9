#!/usr/bin/env bash
# Runs the PyTorch reference's self-test (tools/reference.py selftest). Exits 77 (skip; use ctest's
# SKIP_RETURN_CODE 77) when /usr/bin/python3 has no torch, non-zero on any failure.
set -euo pipefail
PY=${LASP_REFERENCE_PYTHON:-/usr/bin/python3}
if ! "$PY" -c "import torch, numpy" >/dev/null 2>&1; then
  echo "reference_selftest: $PY has no torch/numpy; skipping" >&2
  exit 77
fi
exec "$PY" "$(dirname "$0")/../tools/reference.py" selftest
