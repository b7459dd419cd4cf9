#!/usr/bin/env bash
# Memory plans through `lasp train` and `lasp eval`: every plan gives the losses of the default plan (5 steps,
# relative 1e-5) in fp32 (bf16 below): chunks that do not divide the sequence, on one process and on each of
# 2 DP ranks; per-layer recompute on 1, 2 and 3 SP ranks in both layouts; chunks with recompute inside;
# layer-major chunks on 2 and 3 SP ranks in both layouts and on 2 SP x 2 DP ranks, GLA's, Based's and Rebased's too
# (their methods as well), Gated DeltaNet's chunks on one process and its methods. The plan line is printed; a
# limit that nothing fits, and --chunk across SP ranks with a method that has no chunks, are refused clearly.
# usage: memory_plan_test.sh MPIEXEC LASP
set -euo pipefail
mpiexec=$1 lasp=$2
source "$(dirname "$0")/train_runs.sh"

expect_plan() {  # expect_plan NAME TEXT: the run printed this plan
  grep -q "memory plan: $2" "$dir/$1.log" || { echo "$1: no 'memory plan: $2' in:"; cat "$dir/$1.log"; exit 1; }
}
refused() {  # refused TEXT RANKS ARGS...: the command fails, saying TEXT
  local text=$1 ranks=$2
  shift 2
  if timeout 120 "$mpiexec" --oversubscribe -np "$ranks" "$lasp" "$@" > "$dir/refused.log" 2>&1; then
    echo "expected a refusal: $*"; exit 1
  fi
  grep -q -- "$text" "$dir/refused.log" || { echo "expected '$text' from: $*"; cat "$dir/refused.log"; exit 1; }
  echo "refused: $text"
}

for model in "--layer-types LLLL --decay lightning" "--layer-types LLLN"; do
  name=${model//[^A-Za-z]/}
  run "${name}_keep" 1 --batch 2 $model
  expect_plan "${name}_keep" "every activation kept"
  run "${name}_chunk" 1 --batch 2 $model --chunk 40
  expect_plan "${name}_chunk" "chunks of 40 tokens"
  run "${name}_chunk_recompute" 1 --batch 2 $model --chunk 17 --recompute
  run "${name}_dp2_chunk" 2 --batch 1 --dp-size 2 $model --chunk 32
  run "${name}_recompute" 1 --batch 2 $model --recompute
  expect_plan "${name}_recompute" "each layer's input kept"
  run "${name}_sp2_recompute" 2 --batch 2 --sp-size 2 $model --recompute
  run "${name}_sp3_recompute_contiguous" 3 --batch 2 --sp-size 3 --sp-layout contiguous $model --recompute
  run "${name}_sp3_recompute_zigzag" 3 --batch 2 --sp-size 3 --sp-layout zigzag $model --recompute
  # layer-major chunks across SP ranks (lasp2): 13 tokens divide no piece (48, 32, 16 tokens) and straddle
  # the zigzag pieces
  run "${name}_sp2_chunk" 2 --batch 2 --sp-size 2 $model --chunk 13
  expect_plan "${name}_sp2_chunk" "chunks of 13 tokens, layer by layer"
  run "${name}_sp3_chunk_contiguous" 3 --batch 2 --sp-size 3 --sp-layout contiguous $model --chunk 13
  run "${name}_sp3_chunk_zigzag" 3 --batch 2 --sp-size 3 --sp-layout zigzag $model --chunk 13
  run "${name}_sp2_dp2_chunk" 4 --batch 1 --sp-size 2 --dp-size 2 $model --chunk 16
  for other in chunk chunk_recompute dp2_chunk recompute sp2_recompute sp3_recompute_contiguous sp3_recompute_zigzag \
      sp2_chunk sp3_chunk_contiguous sp3_chunk_zigzag sp2_dp2_chunk; do
    compare "${name}_keep" "${name}_$other"
  done
done

# GLA in LASP-2's layer-major chunks, on 2 and 3 SP ranks, both layouts (lr 2e-4 as in sp_train_test.sh: at
# 1e-3 GLA's 5 steps are chaotic)
gla=(--batch 2 --layer-types LLLN --decay gla --lr 2e-4)
run gla_keep 1 "${gla[@]}"
run gla_sp2_chunk 2 "${gla[@]}" --sp-size 2 --chunk 13
expect_plan gla_sp2_chunk "chunks of 13 tokens, layer by layer"
run gla_sp3_chunk_zigzag 3 "${gla[@]}" --sp-size 3 --sp-layout zigzag --chunk 11
compare gla_keep gla_sp2_chunk
compare gla_keep gla_sp3_chunk_zigzag

# Based and Rebased (issue 25; feature_dim 16: a 153 x 65 or 136 x 65 state per head): chunks on one process,
# LASP-2 whole and in layer-major chunks, exscan, LASP-1 and Ulysses give one process's losses; ring refuses
# them. Rebased at lr 2e-4, as GLA: at 1e-3 its near-zero normalizers and Adam carry the runs' rounding apart to
# 1e-5 by step 5 (exscan on 3 ranks, measured) while the first step agrees to 6e-9.
for map in based rebased; do
  fm=(--batch 2 --layer-types LLLN --feature-map "$map" --feature-dim 16)
  [[ $map == rebased ]] && fm+=(--lr 2e-4)
  run "${map}_keep" 1 "${fm[@]}"
  run "${map}_chunk" 1 "${fm[@]}" --chunk 40
  run "${map}_sp2" 2 "${fm[@]}" --sp-size 2
  run "${map}_sp2_chunk" 2 "${fm[@]}" --sp-size 2 --chunk 13
  expect_plan "${map}_sp2_chunk" "chunks of 13 tokens, layer by layer"
  run "${map}_exscan_sp3" 3 "${fm[@]}" --sp-size 3 --sp-method exscan
  run "${map}_lasp1_sp2" 2 "${fm[@]}" --sp-size 2 --sp-method lasp1
  run "${map}_ulysses_sp4" 4 "${fm[@]}" --sp-size 4 --sp-method ulysses
  for other in chunk sp2 sp2_chunk exscan_sp3 lasp1_sp2 ulysses_sp4; do
    compare "${map}_keep" "${map}_$other"
  done
done
refused "has no Based or Rebased" 2 train --data "$dir/text.txt" --seq-len 96 --steps 1 --sp-size 2 --sp-method ring \
  --feature-map based

# Gated DeltaNet (issue 26; GVA: 8 value heads of 48 over 4 q/k heads of 64): chunks on one process (the delta
# rule's state and the convolutions' tails cross them), with recompute, LASP-2 on 2 ranks (zigzag, the hybrid's
# default, and contiguous) whole and in layer-major chunks (13 and 11 tokens straddle pieces of 24 and divide none
# of 32), the scans and LASP-1 on 3 and Ulysses on 4 (zigzag) give one process's losses; ring refuses it.
gdn=(--batch 2 --layer-types LLLN --decay gdn --num-v-heads 8 --head-v-dim 48 --lr 2e-4)
run gdn_keep 1 "${gdn[@]}"
run gdn_chunk 1 "${gdn[@]}" --chunk 17
run gdn_chunk_recompute 1 "${gdn[@]}" --chunk 40 --recompute
run gdn_sp2 2 "${gdn[@]}" --sp-size 2
grep -q "zigzag layout" "$dir/gdn_sp2.log" || { echo "gdn_sp2: not the zigzag layout:"; cat "$dir/gdn_sp2.log"; exit 1; }
run gdn_sp2_contiguous 2 "${gdn[@]}" --sp-size 2 --sp-layout contiguous
run gdn_sp2_chunk 2 "${gdn[@]}" --sp-size 2 --chunk 13
expect_plan gdn_sp2_chunk "chunks of 13 tokens, layer by layer"
run gdn_sp3_chunk_contiguous 3 "${gdn[@]}" --sp-size 3 --sp-layout contiguous --chunk 11
run gdn_exscan_sp3 3 "${gdn[@]}" --sp-size 3 --sp-method exscan
run gdn_allscan_sp3 3 "${gdn[@]}" --sp-size 3 --sp-method allscan
run gdn_lasp1_sp3 3 "${gdn[@]}" --sp-size 3 --sp-method lasp1
run gdn_ulysses_sp4 4 "${gdn[@]}" --sp-size 4 --sp-method ulysses
for other in chunk chunk_recompute sp2 sp2_contiguous sp2_chunk sp3_chunk_contiguous exscan_sp3 allscan_sp3 lasp1_sp3 \
    ulysses_sp4; do
  compare gdn_keep "gdn_$other"
done
refused "has no gated delta rule" 2 train --data "$dir/text.txt" --seq-len 96 --steps 1 --sp-size 2 --sp-method ring \
  --decay gdn

# bf16 (issue 16): sequence-parallel and chunked runs give the single process's bf16 losses. The exchanged
# states stay fp32, so the first step agrees as fp32 does (measured 1.4e-6 and 2.4e-6). After it, the
# products' summation order (it changes with the row count) moves an fp32 result by an ulp, which now and
# then flips a bf16 rounding of the next product's operand; AdamW's early, sign-like updates amplify that at the
# default lr (5 steps at lr 1e-3: 1e-3 for sp 2, 1.4e-2 for chunks of 40, also on one process), so these runs
# use lr 1e-4, where 5 steps agreed within 7e-5 (measured 6.4e-5 and 3.2e-5) before the softmax attention's
# products went bf16 too; with their roundings (q, k, v, P, dO, dS) more flips compound: sp 2 measures 3.9e-6
# at the first step and 1.4e-4 over 5, chunks of 40 4.4e-6 and 1.1e-4, so the bound over 5 steps is 3e-4.
# A CPU with neither AMX nor AVX-512-BF16 (`lasp info`: "bf16 products: none") must refuse bf16 clearly instead.
if "$lasp" info | grep -q "^bf16 products: none"; then
  refused "neither AMX nor AVX-512-BF16" 1 train --data "$dir/text.txt" --seq-len 96 --steps 1 --precision bf16
  refused "neither AMX nor AVX-512-BF16" 2 train --data "$dir/text.txt" --seq-len 96 --steps 1 --sp-size 2 \
    --precision bf16
  echo "bf16 runs left out: this CPU has no bf16 products"
else
  run bf16_sp1 1 --batch 2 --precision bf16 --lr 1e-4
  run bf16_sp2 2 --batch 2 --sp-size 2 --precision bf16 --lr 1e-4
  run bf16_chunk 1 --batch 2 --precision bf16 --chunk 40 --lr 1e-4
  compare bf16_sp1 bf16_sp2 2e-5 3e-4
  compare bf16_sp1 bf16_chunk 2e-5 3e-4
  # layer-major chunks of 13 on 2 SP ranks in bf16: measured 6.9e-6 at the first step, 1.2e-4 over 5
  run bf16_sp2_chunk 2 --batch 2 --sp-size 2 --chunk 13 --precision bf16 --lr 1e-4
  compare bf16_sp1 bf16_sp2_chunk 2e-5 3e-4
  # and Gated DeltaNet's (its convolutions' tail rows projected on their own)
  gdn_bf16=(--batch 2 --layer-types LLLN --decay gdn --num-v-heads 8 --head-v-dim 48 --precision bf16 --lr 1e-4)
  run bf16_gdn_sp1 1 "${gdn_bf16[@]}"
  run bf16_gdn_sp2_chunk 2 "${gdn_bf16[@]}" --sp-size 2 --chunk 13
  compare bf16_gdn_sp1 bf16_gdn_sp2_chunk 2e-5 3e-4
fi

# eval: a chunked evaluation gives the loss of the whole one
run saved 1 --batch 2 --save "$dir/ckpt"
evaluate() {
  timeout 120 "$lasp" eval --checkpoint "$dir/ckpt" --data "$dir/text.txt" --seq-len 96 --batches 3 --json "$@" \
    2> "$dir/eval.err" | tail -n 1 || { cat "$dir/eval.err"; exit 1; }
}
/usr/bin/python3 - "$(evaluate)" "$(evaluate --chunk 25)" <<'PY'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:])
print("eval whole / chunked:", a["loss"], b["loss"])
assert a["tokens"] == b["tokens"] == 288 and abs(a["loss"] - b["loss"]) <= 1e-6 * a["loss"], (a, b)
PY

refused "raise --memory-limit to at least" 1 train --data "$dir/text.txt" --seq-len 96 --steps 1 --memory-limit 0.01
refused "raise --memory-limit to at least" 1 bench train --seq-len 4096 --steps 1 --memory-limit 0.01
refused "needs a method with a chunked form (lasp2)" 2 train --data "$dir/text.txt" --seq-len 96 --steps 1 --sp-size 2 \
  --sp-method ring --chunk 16
echo "every memory plan agrees"
