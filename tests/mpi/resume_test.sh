#!/usr/bin/env bash
# Resume is bit-identical: 6 steps in one run give exactly the losses of 3 steps + --resume for 3 more,
# on one rank and with --sp-size 2, and from a checkpoint saved with --save-dtype bf16 (its model.safetensors
# is BF16, the fp32 masters ride in optimizer.safetensors).
# usage: resume_test.sh MPIEXEC LASP
set -euo pipefail
mpiexec=$1 lasp=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 500); do echo "resume test line $i: $((i * 7 % 13)) lazy dogs and $((i % 5)) foxes"; done > "$dir/text.txt"
for run in 1 2 1bf16; do
  ranks=${run:0:1} save_dtype=fp32
  [[ $run == *bf16 ]] && save_dtype=bf16
  common=(train --data "$dir/text.txt" --seq-len 64 --batch 2 --steps 6 --sp-size "$ranks" --eval-every 2)
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "${common[@]}" --metrics "$dir/full$run.jsonl" 2> "$dir/log"
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "${common[@]}" --metrics "$dir/part$run.jsonl" \
    --stop-at 3 --save "$dir/ckpt$run" --save-dtype "$save_dtype" 2> "$dir/log"
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "${common[@]}" --metrics "$dir/part$run.jsonl" \
    --resume "$dir/ckpt$run" 2> "$dir/log" || { cat "$dir/log"; exit 1; }
  /usr/bin/python3 - "$dir/full$run.jsonl" "$dir/part$run.jsonl" "$run" "$dir/ckpt$run" "$save_dtype" <<'PY'
import json, struct, sys
full = [json.loads(l) for l in open(sys.argv[1])]
part = [json.loads(l) for l in open(sys.argv[2])]
a = [(r["step"], r["loss"], r.get("val_loss")) for r in full]
b = [(r["step"], r["loss"], r.get("val_loss")) for r in part]
print(f"sp {sys.argv[3]}: uninterrupted {a}\n      3 + resume 3 {b}")
assert a == b, "losses differ"
with open(sys.argv[4] + "/model.safetensors", "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
assert dtypes == {{"fp32": "F32", "bf16": "BF16"}[sys.argv[5]]}, dtypes
PY
done
echo "resume is bit-identical"
