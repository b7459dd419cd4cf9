#!/usr/bin/env bash
# The LASP-2 paper's Table 2 at this machine's scale: the six linear-attention kinds (basic, lightning, retention,
# GLA, Based, Rebased) and Gated DeltaNet (gdn, not in the paper), each pure ("LLLL") and as a 1/4 hybrid ("LLLN":
# the last layer softmax attention), trained
# on the same tokens with the same budget over 2 sequence-parallel ranks (LASP-2, LASP-2H for the softmax layer).
# Prints each run's final validation loss and training tokens/s beside the paper's own numbers
# (../shared/design/LASP2.md section 6) and draws the fourteen validation curves in one PNG. Sets up and builds
# first. The data: the fortunes texts as subword tokens (scripts/fortunes_tokens.sh), the last 10% held out.
# LASP_TABLE2_STEPS (default 400) and LASP_TABLE2_DIR (default runs/table2) change the budget and the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
out=${LASP_TABLE2_DIR:-runs/table2}
steps=${LASP_TABLE2_STEPS:-400}
mkdir -p "$out"
scripts/fortunes_tokens.sh "$out/tokens" >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
export OMP_NUM_THREADS=1  # one core per rank

kinds=(basic lightning retention gla based rebased gdn)
declare -A flags=([basic]="--decay none" [lightning]="--decay lightning" [retention]="--decay retention"
                  [gla]="--decay gla" [based]="--feature-map based --feature-dim 16"
                  [rebased]="--feature-map rebased --feature-dim 16" [gdn]="--decay gdn")
# The paper (Linear-Llama3-1B, 8 A100s, N = 16K): "loss tokens/s" per kind and layout; '-' where it gives none,
# a range where it gives one for the three fixed-decay kinds together.
declare -A paper=([basic_LLLL]="2.86-2.89 17834" [lightning_LLLL]="2.86-2.89 17926"
                  [retention_LLLL]="2.86-2.89 17860" [gla_LLLL]="2.845 17785" [based_LLLL]="2.754 17946"
                  [rebased_LLLL]="2.845 17896" [basic_LLLN]="2.76-2.82 17395" [lightning_LLLN]="2.76-2.82 -"
                  [retention_LLLN]="2.76-2.82 -" [gla_LLLN]="2.754 17273" [based_LLLN]="2.751 17463"
                  [rebased_LLLN]="2.787 17285" [gdn_LLLL]="- -" [gdn_LLLN]="- -")

start=$SECONDS
runs=()
for layers in LLLL LLLN; do
  for kind in "${kinds[@]}"; do
    run=$out/${kind}_$layers
    runs+=("$run.jsonl")
    rm -f "$run.jsonl"
    echo "[${#runs[@]}/$((2 * ${#kinds[@]}))] $kind $layers ($((SECONDS - start)) s so far)"
    # shellcheck disable=SC2086  # the kind's flags are words
    mpirun --oversubscribe -np 2 build/lasp train --data "$out/tokens/tokens_*.bin" --sp-size 2 \
      --layer-types "$layers" ${flags[$kind]} --hidden 128 --heads 2 --kv-heads 1 --ffn 384 \
      --seq-len 2048 --batch 2 --steps "$steps" --lr 2e-3 --seed 1 --eval-every 50 --eval-batches 16 \
      --metrics "$run.jsonl" > "$run.log" 2>&1 || { tail -5 "$run.log"; exit 1; }
  done
done
build/lasp plot "${runs[@]}" --out "$out/table2.png" --second-group ${#kinds[@]} \
  --title "validation loss: seven kinds, pure (LLLL, filled points) and 1/4 hybrid (LLLN, open points), 2 SP ranks" \
  >/dev/null

median_tokens() { jq -s '[.[].tokens_per_s] | sort | .[length / 2 | floor]' "$1"; }
final_val() { jq -s '[.[] | select(.val_loss != null) | .val_loss] | last' "$1"; }
base=$(median_tokens "$out/basic_LLLL.jsonl")
echo
echo "The paper's Table 2 at this machine's scale: $steps steps of 2 x 2048 tokens, hidden 128, 4 layers, 2 SP ranks"
echo "on $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) ($(build/lasp info | sed -n 's/^CPU features: //p'))," \
  "$((SECONDS - start)) s. The paper: Linear-Llama3-1B, 8 A100s, N = 16K."
printf '%-10s %-6s | %9s %9s %8s | %10s %9s %8s\n' kind layers "val loss" tokens/s "vs basic" "paper loss" tokens/s \
  "vs basic"
for layers in LLLL LLLN; do
  for kind in "${kinds[@]}"; do
    run=$out/${kind}_$layers.jsonl
    read -r ploss ptok <<< "${paper[${kind}_$layers]}"
    tok=$(median_tokens "$run")
    pratio=-
    [ "$ptok" = - ] || pratio=$(awk -v a="$ptok" 'BEGIN { printf "%.3f", a / 17834 }')
    printf '%-10s %-6s | %9.4f %9.0f %8.3f | %10s %9s %8s\n' "$kind" "$layers" "$(final_val "$run")" "$tok" \
      "$(awk -v a="$tok" -v b="$base" 'BEGIN { print a / b }')" "$ploss" "$ptok" "$pratio"
  done
done
echo "loss curves: $out/table2.png; metrics and logs: $out/KIND_LAYERS.jsonl, .log"
