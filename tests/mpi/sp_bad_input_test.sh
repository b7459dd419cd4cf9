#!/usr/bin/env bash
# Bad sequence-parallel input under mpirun: a clear error and a non-zero exit from every rank, within
# seconds; and a rank killed mid-run ends the whole job.
# usage: sp_bad_input_test.sh MPIEXEC LASP
set -uo pipefail
mpiexec=$1 lasp=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 2000); do echo "line $i of a small text for the failure tests"; done > "$dir/text.txt"
failures=0

expect_error() {  # expect_error MESSAGE RANKS ARGS...
  local message=$1 ranks=$2
  shift 2
  local start=$SECONDS
  timeout 60 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" train --data "$dir/text.txt" --steps 2 "$@" > "$dir/out" 2>&1
  local rc=$? elapsed=$((SECONDS - start))
  if [ $rc -eq 0 ] || [ $rc -eq 124 ] || ! grep -q -- "$message" "$dir/out" || [ $elapsed -gt 30 ]; then
    echo "FAIL: $* -> exit $rc after ${elapsed}s, expected '$message':"; cat "$dir/out"; failures=$((failures + 1))
  else
    echo "ok: $* -> exit $rc after ${elapsed}s: $(grep -m1 -- "$message" "$dir/out")"
  fi
}

expect_error "divisible by the sp size" 2 --seq-len 97 --sp-size 2 --layer-types LLLL
expect_error "divisible by 2 x sp size" 2 --seq-len 98 --sp-size 2
expect_error "must equal the number of ranks" 2 --seq-len 64 --sp-size 4
expect_error "must equal the number of ranks" 3 --seq-len 64 --sp-size 2 --dp-size 2
expect_error "num_key_value_heads" 2 --seq-len 64 --sp-size 2 --kv-heads 3

# A rank killed in the middle of training ends the job promptly.
timeout 120 "$mpiexec" --oversubscribe -np 2 "$lasp" train --data "$dir/text.txt" --seq-len 128 --steps 100000 \
  --sp-size 2 --metrics "$dir/m.jsonl" > "$dir/kill.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do [ -s "$dir/m.jsonl" ] && break; sleep 0.1; done
victim=$(pgrep -f -n "$lasp train --data $dir/text.txt")
start=$SECONDS
kill -9 "$victim"
wait $job
rc=$? elapsed=$((SECONDS - start))
if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ $elapsed -gt 20 ]; then
  echo "FAIL: killing rank pid $victim: job exit $rc after ${elapsed}s"; cat "$dir/kill.log"; failures=$((failures + 1))
else
  echo "ok: killed one rank, the job ended with exit $rc after ${elapsed}s"
fi
echo "$failures failures"
exit $((failures > 0))
