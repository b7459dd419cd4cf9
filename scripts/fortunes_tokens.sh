#!/usr/bin/env bash
# Turns the ~15,000 short texts of Debian's fortunes package (/usr/share/games/fortunes: quotations, jokes,
# poems, 2.5 MB, each between lines holding only '%') into subword tokens in folder $1 with `lasp tokenize` (a
# SentencePiece BPE of 2048 pieces; each text one document). The collections go in name order with `cookie`, the
# package's miscellany, last: it is most of the last 10% of the tokens, the part that `lasp train`'s default
# --val-fraction holds out for validation. Used by scripts/demo.sh and scripts/table2.sh (built lasp expected).
set -euo pipefail
cd "$(dirname "$0")/.."
fortunes=/usr/share/games/fortunes
files=()
for f in "$fortunes"/*; do  # the text files (not the .dat indexes, nor the .u8 links to the same texts)
  name=${f##*/}
  [[ $name == *.* || $name == cookie ]] || files+=("$f")
done
build/lasp tokenize --input "${files[@]}" "$fortunes/cookie" --separator $'\n%\n' --vocab-size 2048 --out "$1"
