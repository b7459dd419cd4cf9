#!/usr/bin/env bash
# The main job on an embedded default: sets up, builds, then trains lasp's default small hybrid ("LLLN")
# with sequence parallelism over 2 ranks (LASP-2 + LASP-2H) on text every Debian system has (the GPL-3
# and the other licence texts in /usr/share/common-licenses), saves a checkpoint and evaluates it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
out=${LASP_DEMO_DIR:-runs/demo}
mkdir -p "$out"
cat /usr/share/common-licenses/* > "$out/corpus.txt" 2>/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
export OMP_NUM_THREADS=1  # one core per rank
mpirun --oversubscribe -np 2 build/lasp train --data "$out/corpus.txt" --sp-size 2 --seq-len 512 --batch 4 \
  --steps ${LASP_DEMO_STEPS:-150} --lr 3e-3 --metrics "$out/metrics.jsonl" --save "$out/checkpoint"
mpirun --oversubscribe -np 2 build/lasp eval --checkpoint "$out/checkpoint" --data "$out/corpus.txt" --seq-len 512 \
  --batches 8 --sp-size 2 --json
