#!/usr/bin/env bash
# lasp tokenize at scale: a generated corpus of GB gigabytes of text (default 2.1) as zstd-compressed JSON Lines
# (the ~15,000 texts of Debian's fortunes package, one per line, over and over in shuffled orders), tokenized
# once training a tokenizer on the default sample (--sample-bytes) and then with that tokenizer on 1 and 2
# threads. Prints, for each run, the wall time and the peak RSS (/usr/bin/time) and tokenize's own times of its
# passes with the text's MB/s; the shards of the 1- and 2-thread runs must be identical.
# usage: scripts/bench_tokenize.sh [GB] [DIR]   (DIR: scratch space for the corpus and the outputs, default
#        /tmp/lasp-bench-tokenize, removed at the end; needs ~1.2 GB per GB of text)
set -euo pipefail
cd "$(dirname "$0")/.."
gb=${1:-2.1}
dir=${2:-/tmp/lasp-bench-tokenize}
lasp=$PWD/build/lasp
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT

echo "bench_tokenize: writing $gb GB of JSON Lines to $dir/corpus.jsonl.zst"
/usr/bin/python3 - "$gb" <<'PY' | zstd -q -T2 -3 -o "$dir/corpus.jsonl.zst"
import glob, json, os, random, sys
docs = []
for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
    if "." not in os.path.basename(f):
        docs += [d for d in open(f, encoding="utf-8").read().split("\n%\n") if d.strip()]
lines = [json.dumps({"text": d}) + "\n" for d in docs]
target, written, rng = float(sys.argv[1]) * 1e9, 0, random.Random(1)
while written < target:
    rng.shuffle(lines)
    chunk = "".join(lines)
    sys.stdout.write(chunk)
    written += len(chunk.encode())
PY
ls -l "$dir/corpus.jsonl.zst"

run() {  # run NAME ARGS...: one tokenize under /usr/bin/time
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$dir/$name.time" "$lasp" "$@" --out "$dir/$name" > "$dir/$name.log" 2> /dev/null
  read -r seconds kb < "$dir/$name.time"
  printf 'bench_tokenize: %-8s %7.1f s, peak RSS %5d MB; %s\n' "$name" "$seconds" "$((kb / 1024))" \
    "$(grep -E 'encoding .* s \(' "$dir/$name.log" | sed 's/^tokenize: //')"
}
uptime
run train tokenize --input "$dir/corpus.jsonl.zst" --vocab-size 8192
head -1 "$dir/train.log"
run threads1 --threads 1 tokenize --input "$dir/corpus.jsonl.zst" --model "$dir/train/tokenizer.model"
run threads2 --threads 2 tokenize --input "$dir/corpus.jsonl.zst" --model "$dir/train/tokenizer.model"
for f in "$dir"/threads1/tokens_*.bin; do cmp "$f" "$dir/threads2/${f##*/}"; done
echo "bench_tokenize: the shards of 1 and 2 threads are identical"
uptime
