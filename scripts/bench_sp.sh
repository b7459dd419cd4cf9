#!/usr/bin/env bash
# Tokens/s and communication per rank of `lasp train` on the default small hybrid for several sequence
# lengths and SP sizes, on this machine (shared memory). Prints a table; the per-step numbers are the
# median over the steps after the first.
# usage: scripts/bench_sp.sh [STEPS] [SEQ_LENS...]   (default: 3 steps, 16384 65536)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3}
shift || true
lens=("${@:-16384 65536}")
[ ${#lens[@]} -eq 1 ] && read -r -a lens <<< "${lens[0]}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
/usr/bin/python3 -c "
import random
random.seed(0)
words = 'the of and to in a is that for it as was with be by on not he this are or his from at which but'.split()
open('$dir/text.txt', 'w').write(' '.join(random.choice(words) for _ in range(120000)))"
cores=$(nproc)
printf "%-8s %-4s %12s %16s %16s\n" "N" "sp" "tokens/s" "attn MB/rank" "grad MB/rank"
for n in "${lens[@]}"; do
  for sp in 1 2 4; do
    threads=$(( cores / sp > 0 ? cores / sp : 1 ))
    OMP_NUM_THREADS=$threads mpirun --oversubscribe --bind-to none -np "$sp" build/lasp train --data "$dir/text.txt" \
      --seq-len "$n" --steps "$steps" --sp-size "$sp" --metrics "$dir/m.jsonl" > "$dir/log" 2>&1 || { cat "$dir/log"; exit 1; }
    /usr/bin/python3 - "$dir/m.jsonl" "$n" "$sp" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:] or [json.loads(l) for l in open(sys.argv[1])]
tps = statistics.median(r["tokens_per_s"] for r in rows)
print(f"{sys.argv[2]:<8} {sys.argv[3]:<4} {tps:12.0f} {rows[-1]['attention_bytes']/1e6:16.2f} {rows[-1]['gradient_bytes']/1e6:16.2f}")
PY
    rm -f "$dir/m.jsonl"
  done
done
