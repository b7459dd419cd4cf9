#!/usr/bin/env bash
# One rank of three fails; the whole job must end, non-zero, within 20 s (instead of the others waiting
# forever in a collective). usage: abort_test.sh MPIEXEC HELPER
set -u
mpiexec=$1 helper=$2
status=0

# run NAME EXPECT ARGS...: EXPECT is "nonzero" or an exact exit code.
run() {
  local name=$1 expect=$2
  shift 2
  local start end rc ms out
  start=$(date +%s%N)
  out=$(timeout 30 "$@" 2>&1)
  rc=$?
  end=$(date +%s%N)
  ms=$(((end - start) / 1000000))
  if [ "$expect" = nonzero ]; then
    ok=$([ $rc -ne 0 ] && [ $rc -ne 124 ] && echo 1 || echo 0)
  else
    ok=$([ $rc -eq "$expect" ] && echo 1 || echo 0)
  fi
  if [ "$ok" = 1 ] && [ $ms -lt 20000 ]; then
    echo "ok   $name: exit $rc after $ms ms"
  else
    echo "FAIL $name: exit $rc after $ms ms (expected exit $expect within 20 s; 124 = timed out)"
    echo "$out" | tail -n 20
    status=1
  fi
  LAST_OUTPUT=$out
}

run "all ranks fine" 0 "$mpiexec" --oversubscribe -np 3 "$helper" ok
run "rank 1 throws -> abort" nonzero "$mpiexec" --oversubscribe -np 3 "$helper" throw
if ! grep -q "lasp: rank 1: .*rank 1 fails on purpose" <<<"$LAST_OUTPUT"; then
  echo "FAIL abort message missing; output was:"; echo "$LAST_OUTPUT" | tail -n 20; status=1
fi
run "rank 1 SIGKILL" nonzero "$mpiexec" --oversubscribe -np 3 "$helper" kill
run "single-process abort" 3 "$helper" single
if ! grep -q "lasp: single-process abort" <<<"$LAST_OUTPUT"; then
  echo "FAIL single abort message missing; output was:"; echo "$LAST_OUTPUT"; status=1
fi
exit $status
