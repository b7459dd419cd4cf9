#!/usr/bin/env bash
# `lasp train` under mpirun: 5 steps with --sp-size 2 and 4 (and dp 2 x sp 2) give the losses of
# --sp-size 1 (relative 1e-5), for the default hybrid (zigzag) and a pure linear model (contiguous).
# usage: sp_train_test.sh MPIEXEC LASP
set -euo pipefail
mpiexec=$1 lasp=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 400); do echo "line $i: the quick brown fox $((i % 7)) jumps over the lazy dog $((i % 11))"; done > "$dir/text.txt"

run() {  # run NAME RANKS ARGS...
  local name=$1 ranks=$2
  shift 2
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" train --data "$dir/text.txt" --seq-len 96 --steps 5 \
    --metrics "$dir/$name.jsonl" "$@" > "$dir/$name.log" 2>&1 || { cat "$dir/$name.log"; exit 1; }
}
compare() {  # compare REFERENCE OTHER
  /usr/bin/python3 - "$dir/$1.jsonl" "$dir/$2.jsonl" <<'PY'
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
assert len(a) == len(b) == 5, (a, b)
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"{sys.argv[2].split('/')[-1]}: losses {['%.6f' % x for x in b]}, worst relative difference {worst:.1e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
}

run hybrid_sp1 1 --batch 2
run hybrid_sp2 2 --batch 2 --sp-size 2
run hybrid_sp4 4 --batch 2 --sp-size 4
run hybrid_dp2_sp2 4 --batch 1 --sp-size 2 --dp-size 2
compare hybrid_sp1 hybrid_sp2
compare hybrid_sp1 hybrid_sp4
compare hybrid_sp1 hybrid_dp2_sp2

run linear_sp1 1 --batch 2 --layer-types LLLL --decay lightning
run linear_sp4 4 --batch 2 --layer-types LLLL --decay lightning --sp-size 4 --sp-layout contiguous
run linear_sp3 3 --batch 2 --layer-types LLLL --decay lightning --sp-size 3
run linear_lasp1_sp4 4 --batch 2 --layer-types LLLL --decay lightning --sp-size 4 --sp-method lasp1
run hybrid_lasp1_sp2 2 --batch 2 --sp-size 2 --sp-method lasp1
run hybrid_ulysses_sp4 4 --batch 2 --sp-size 4 --sp-method ulysses
run hybrid_ring_sp2 2 --batch 2 --sp-size 2 --sp-method ring
run hybrid_ringzz_sp4 4 --batch 2 --sp-size 4 --sp-method ring-zigzag
run linear_allgather_sp3 3 --batch 2 --layer-types LLLL --decay lightning --sp-size 3 --sp-method allgather
compare linear_sp1 linear_sp4
compare linear_sp1 linear_sp3
compare linear_sp1 linear_lasp1_sp4
compare hybrid_sp1 hybrid_lasp1_sp2
compare linear_sp1 linear_allgather_sp3
compare hybrid_sp1 hybrid_ulysses_sp4
compare hybrid_sp1 hybrid_ring_sp2
compare hybrid_sp1 hybrid_ringzz_sp4
# eval of a checkpoint: the same loss on 1 rank, on sp 2 and on dp 2 x sp 2
run saved 1 --batch 2 --save "$dir/ckpt"
evaluate() {  # evaluate RANKS ARGS...
  local ranks=$1
  shift
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" eval --checkpoint "$dir/ckpt" --data "$dir/text.txt" \
    --seq-len 96 --batches 6 --json "$@" 2> "$dir/eval.err" | tail -n 1 || { cat "$dir/eval.err"; exit 1; }
}
e1=$(evaluate 1)
e2=$(evaluate 2 --sp-size 2)
e4=$(evaluate 4 --sp-size 2 --dp-size 2)
/usr/bin/python3 - "$e1" "$e2" "$e4" <<'PY'
import json, sys
r = [json.loads(x) for x in sys.argv[1:]]
print("eval:", [(x["loss"], x["tokens"], x["attention_bytes"]) for x in r])
assert all(x["tokens"] == 576 for x in r)
assert all(abs(x["loss"] - r[0]["loss"]) <= 1e-6 * r[0]["loss"] for x in r), r
PY
echo "sp training runs agree"
