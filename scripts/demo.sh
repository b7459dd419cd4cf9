#!/usr/bin/env bash
# The main job on an embedded default: sets up, builds, then turns the ~15,000 short texts of Debian's fortunes
# package (quotations, jokes, poems, 2.5 MB) into subword tokens (scripts/fortunes_tokens.sh: `lasp tokenize`, a
# SentencePiece BPE of 2048 pieces), trains a small hybrid ("LLLN", hidden 128) on them with sequence
# parallelism over 2 ranks (LASP-2 for the linear layers, LASP-2H for the softmax layer) for about one pass over the
# training part, evaluates the held-out part (the last 10%, never trained on) every 30 steps, plots both loss
# curves and prints a generated sample.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
out=${LASP_DEMO_DIR:-runs/demo}
mkdir -p "$out"
rm -f "$out/metrics.jsonl"
scripts/fortunes_tokens.sh "$out/tokens"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
export OMP_NUM_THREADS=1  # one core per rank
start=$SECONDS
mpirun --oversubscribe -np 2 build/lasp train --data "$out/tokens/tokens_*.bin" --sp-size 2 \
  --hidden 128 --heads 2 --kv-heads 1 --ffn 384 --seq-len 512 --batch 8 --steps "${LASP_DEMO_STEPS:-240}" --lr 2e-3 \
  --eval-every 30 --eval-batches 16 --metrics "$out/metrics.jsonl" --save "$out/checkpoint"
echo "trained in $((SECONDS - start)) s"
build/lasp plot "$out/metrics.jsonl" --out "$out/loss.png" 2>/dev/null
echo "--- a sample (temperature 0.7) ---"
build/lasp generate --checkpoint "$out/checkpoint" --prompt "The" --max-new-tokens 200 --temperature 0.7
