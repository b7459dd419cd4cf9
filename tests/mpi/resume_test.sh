#!/usr/bin/env bash
# Resume is bit-identical: 6 steps in one run give exactly the losses of 3 steps + --resume for 3 more,
# on one rank and with --sp-size 2.
# usage: resume_test.sh MPIEXEC LASP
set -euo pipefail
mpiexec=$1 lasp=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 500); do echo "resume test line $i: $((i * 7 % 13)) lazy dogs and $((i % 5)) foxes"; done > "$dir/text.txt"
for ranks in 1 2; do
  common=(train --data "$dir/text.txt" --seq-len 64 --batch 2 --steps 6 --sp-size "$ranks" --eval-every 2)
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "${common[@]}" --metrics "$dir/full$ranks.jsonl" 2> "$dir/log"
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "${common[@]}" --metrics "$dir/part$ranks.jsonl" \
    --stop-at 3 --save "$dir/ckpt$ranks" 2> "$dir/log"
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "${common[@]}" --metrics "$dir/part$ranks.jsonl" \
    --resume "$dir/ckpt$ranks" 2> "$dir/log" || { cat "$dir/log"; exit 1; }
  /usr/bin/python3 - "$dir/full$ranks.jsonl" "$dir/part$ranks.jsonl" "$ranks" <<'PY'
import json, sys
full = [json.loads(l) for l in open(sys.argv[1])]
part = [json.loads(l) for l in open(sys.argv[2])]
a = [(r["step"], r["loss"], r.get("val_loss")) for r in full]
b = [(r["step"], r["loss"], r.get("val_loss")) for r in part]
print(f"sp {sys.argv[3]}: uninterrupted {a}\n      3 + resume 3 {b}")
assert a == b, "losses differ"
PY
done
echo "resume is bit-identical"
