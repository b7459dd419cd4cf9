#!/usr/bin/env bash
# Fuzzes lasp's file readers with libFuzzer + ASan + UBSan (tests/fuzz/README.md).
# Usage: scripts/fuzz.sh [SECONDS] [HARNESS...]
#   SECONDS  time per harness (default 60); HARNESS: fuzz_safetensors fuzz_config fuzz_shards fuzz_trainer_state
#            fuzz_tokenizer_model fuzz_manifest fuzz_jsonl (default all), run one after another.
# Each harness first replays its reproducers in tests/fuzz/findings/<harness>/ (if any), then fuzzes a copy
# of tests/fuzz/corpus/<harness>/ in a scratch folder, so the repository is not touched. Prints per harness
# the executions and whether it found anything; new crashing inputs are kept in build-fuzz/findings/<harness>/.
# Exits non-zero if any harness crashed, reported a sanitizer error, timed out or a reproducer still fails.
# LASP_FUZZ_KEEP_GOING=1: libFuzzer's fork mode (-fork=1 -ignore_crashes=1), which goes on after a finding
# for the whole time and keeps every distinct crashing input (a known bug then does not end the run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }
shift || true
all=(fuzz_safetensors fuzz_config fuzz_shards fuzz_trainer_state fuzz_tokenizer_model fuzz_manifest fuzz_jsonl)
harnesses=("$@")
((${#harnesses[@]})) || harnesses=("${all[@]}")
for h in "${harnesses[@]}"; do
  [[ " ${all[*]} " == *" $h "* ]] || { echo "fuzz.sh: unknown harness '$h' (one of: ${all[*]})" >&2; exit 2; }
done

scripts/setup.sh --fuzz
cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-16 >/dev/null
ninja -C build-fuzz "${harnesses[@]}"

symbolizer=$(command -v llvm-symbolizer-16 || command -v llvm-symbolizer || command -v addr2line || true)
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:external_symbolizer_path=$symbolizer}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:external_symbolizer_path=$symbolizer}
export OMP_NUM_THREADS=1

scratch=$(mktemp -d "${TMPDIR:-/tmp}/lasp-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
failed=0
summary=()
for h in "${harnesses[@]}"; do
  bin=$root/build-fuzz/$h
  rm -rf "build-fuzz/findings/$h"
  mkdir -p "$scratch/$h/corpus" "$scratch/$h/artifacts"
  cp -r "tests/fuzz/corpus/$h/." "$scratch/$h/corpus/"

  # Known reproducers: each must now pass (they are regression tests once the bug is fixed).
  repro_fail=0
  repros=(tests/fuzz/findings/"$h"/*)
  if [[ -e ${repros[0]} ]]; then
    for r in "${repros[@]}"; do
      if ! "$bin" -runs=1 "$r" >"$scratch/$h/repro.log" 2>&1; then
        repro_fail=$((repro_fail + 1))
        echo "fuzz.sh: $h: reproducer $r still fails:" >&2
        grep -E "ERROR|runtime error|round trip|SUMMARY" "$scratch/$h/repro.log" | head -5 >&2 || true
      fi
    done
  fi

  echo "fuzz.sh: $h for ${seconds}s ..."
  rc=0
  start=$SECONDS
  mode=()
  [[ ${LASP_FUZZ_KEEP_GOING:-0} == 1 ]] && mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=0 -ignore_ooms=0)
  "$bin" "${mode[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$scratch/$h/artifacts/" "$scratch/$h/corpus" >"$scratch/$h/log" 2>&1 || rc=$?
  # Executions: the final stats, else the last status line (#N in plain mode, #N: in fork mode).
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$h/log" | tail -1)
  [[ -n $execs ]] || execs=$(grep -oE '^#[0-9]+' "$scratch/$h/log" | tail -1 | tr -d '#')
  artifacts=("$scratch/$h/artifacts"/*)
  if ((rc != 0)) || [[ -e ${artifacts[0]} ]]; then
    mkdir -p "build-fuzz/findings/$h"
    cp "$scratch/$h/log" "build-fuzz/findings/$h/log.txt"
    [[ -e ${artifacts[0]} ]] && cp "${artifacts[@]}" "build-fuzz/findings/$h/"
    result="FOUND a problem (exit $rc): input and log in build-fuzz/findings/$h/"
    grep -E "ERROR:|runtime error|round trip|SUMMARY" "$scratch/$h/log" | head -5 >&2 || true
    failed=1
  else
    result="nothing found"
  fi
  ((repro_fail == 0)) || { result+="; $repro_fail reproducer(s) in tests/fuzz/findings/$h still fail"; failed=1; }
  line=$(printf '%-20s %12s executions in %ss (corpus %s -> %s files): %s' "$h" "${execs:-?}" "$((SECONDS - start))" \
    "$(ls "tests/fuzz/corpus/$h" | wc -l)" "$(ls "$scratch/$h/corpus" | wc -l)" "$result")
  echo "$line"
  summary+=("$line")
done
echo "fuzz.sh: summary"
printf '  %s\n' "${summary[@]}"
exit $failed
