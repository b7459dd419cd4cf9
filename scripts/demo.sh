#!/usr/bin/env bash
# The main job on an embedded default: sets up, builds, then turns text every Debian system has (the licence
# texts in /usr/share/common-licenses, each file one document) into subword tokens with `lasp tokenize` (a
# SentencePiece BPE of 2048 pieces), trains lasp's default small hybrid ("LLLN") on them with sequence
# parallelism over 2 ranks (LASP-2 for the linear layers, LASP-2H for the softmax layer) and a held-out
# validation part, plots the loss curve and prints a generated sample.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
out=${LASP_DEMO_DIR:-runs/demo}
mkdir -p "$out"
rm -f "$out/metrics.jsonl"
build/lasp tokenize --input /usr/share/common-licenses/* --vocab-size 2048 --out "$out/tokens"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
export OMP_NUM_THREADS=1  # one core per rank
start=$SECONDS
mpirun --oversubscribe -np 2 build/lasp train --data "$out/tokens/tokens_*.bin" --sp-size 2 --seq-len 512 --batch 4 \
  --steps "${LASP_DEMO_STEPS:-300}" --lr 3e-3 --eval-every 50 --metrics "$out/metrics.jsonl" --save "$out/checkpoint"
echo "trained in $((SECONDS - start)) s"
build/lasp plot "$out/metrics.jsonl" --out "$out/loss.png" 2>/dev/null
echo "--- a sample (temperature 0.7) ---"
build/lasp generate --checkpoint "$out/checkpoint" --prompt "This License" --max-new-tokens 200 --temperature 0.7
