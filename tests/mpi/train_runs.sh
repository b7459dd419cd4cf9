# Sourced by the tests that compare `lasp train` runs (sp_train_test.sh, memory_plan_test.sh): a text corpus
# in a temporary folder, run NAME RANKS ARGS... (5 steps of 96 tokens, metrics in $dir/NAME.jsonl) and
# compare REFERENCE OTHER [FIRST_STEP_TOLERANCE ALL_STEPS_TOLERANCE] (relative; default 1e-5 both).
# Expects mpiexec and lasp to be set.
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 400); do echo "line $i: the quick brown fox $((i % 7)) jumps over the lazy dog $((i % 11))"; done > "$dir/text.txt"

run() {
  local name=$1 ranks=$2
  shift 2
  timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" train --data "$dir/text.txt" --seq-len 96 --steps 5 \
    --metrics "$dir/$name.jsonl" "$@" > "$dir/$name.log" 2>&1 || { cat "$dir/$name.log"; exit 1; }
}

compare() {
  /usr/bin/python3 - "$dir/$1.jsonl" "$dir/$2.jsonl" "${3:-1e-5}" "${4:-1e-5}" <<'PY'
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
first_tol, all_tol = float(sys.argv[3]), float(sys.argv[4])
assert len(a) == len(b) == 5, (a, b)
diffs = [abs(x - y) / abs(x) for x, y in zip(a, b)]
print(f"{sys.argv[2].split('/')[-1]}: losses {['%.6f' % x for x in b]}, first step {diffs[0]:.1e}, worst {max(diffs):.1e}")
sys.exit(0 if diffs[0] <= first_tol and max(diffs) <= all_tol else 1)
PY
}
