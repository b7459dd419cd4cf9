#!/usr/bin/env bash
# lasp tokenize against Debian's python3-sentencepiece: the shards hold, document after document, BOS followed
# by Python's encoding of the whole text, for a tokenizer lasp trains (bpe and unigram) and for a .model Python
# trained; decode(encode(text)) == text (newlines kept); --separator splits documents; a new model trains on
# the shards with the tokenizer's vocabulary; bad input is a clear error; the same documents as JSON Lines, gzip
# or zstd give the same tokenizer and shards.
# usage: tokenize_test.sh LASP
set -euo pipefail
lasp=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
licences=(/usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 /usr/share/common-licenses/Artistic)

check() {  # check OUT_DIR SEPARATOR FILES...: the shards equal Python's encoding of the documents
  local out=$1 separator=$2
  shift 2
  /usr/bin/python3 - "$out" "$separator" "$@" <<'PY'
import glob, sys
import numpy as np, sentencepiece as spm
import gzip, json, subprocess
out, separator, files = sys.argv[1], sys.argv[2], sys.argv[3:]
sp = spm.SentencePieceProcessor(model_file=out + "/tokenizer.model")
tokens = np.concatenate([np.fromfile(p, dtype="<u2")[512:] for p in sorted(glob.glob(out + "/tokens_*.bin"))])
def read(f):  # the file's text, decompressed
    if f.endswith(".gz"): return gzip.open(f).read().decode("utf-8")
    if f.endswith(".zst"): return subprocess.run(["zstd", "-dc", f], capture_output=True, check=True).stdout.decode("utf-8")
    return open(f, encoding="utf-8").read()
expected, documents = [], 0
for f in files:
    text = read(f)
    if f.replace(".gz", "").replace(".zst", "").endswith(".jsonl"):  # JSON Lines: each line's "text" a document
        docs = [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
    else:
        docs = text.split(separator) if separator else [text]
    for doc in docs:
        if separator and doc == "" and documents > 0:
            continue  # a trailing separator
        ids = sp.encode(doc)
        assert sp.decode(ids) == doc, f"{f}: decode(encode(text)) != text"
        expected += [sp.bos_id()] + ids
        documents += 1
assert len(tokens) == len(expected) and (tokens == np.array(expected)).all(), (len(tokens), len(expected))
print(f"{out}: {documents} documents, {len(tokens)} tokens equal python3-sentencepiece's, round trips exact")
PY
}

"$lasp" tokenize --input "${licences[@]}" --vocab-size 1000 --out "$dir/bpe" --shard-tokens 5000
check "$dir/bpe" "" "${licences[@]}"
# The same documents as JSON Lines and compressed (gzip, zstd): the same tokenizer and shards, Python's encoding
/usr/bin/python3 -c '
import json, sys
with open(sys.argv[1], "w") as f:
    for p in sys.argv[2:]: f.write(json.dumps({"id": p, "text": open(p, encoding="utf-8").read()}) + "\n")
' "$dir/c.jsonl" "${licences[@]}"
gzip -k "$dir/c.jsonl" && zstd -q "$dir/c.jsonl"
for i in 0 1 2; do cp "${licences[$i]}" "$dir/doc$i"; done
gzip "$dir/doc0" && zstd -q --rm "$dir/doc1"
for input in "$dir/c.jsonl" "$dir/c.jsonl.gz" "$dir/c.jsonl.zst" "$dir/doc0.gz $dir/doc1.zst $dir/doc2"; do
  # shellcheck disable=SC2086  # the last holds three files
  "$lasp" tokenize --input $input --vocab-size 1000 --out "$dir/formats" --shard-tokens 5000 > /dev/null
  for f in "$dir"/bpe/tokenizer.model "$dir"/bpe/tokens_*.bin; do cmp "$f" "$dir/formats/${f##*/}"; done
  # shellcheck disable=SC2086
  check "$dir/formats" "" $input
done
"$lasp" tokenize --input "${licences[@]}" --vocab-size 800 --model-type unigram --out "$dir/unigram"
check "$dir/unigram" "" "${licences[@]}"
"$lasp" tokenize --input "${licences[0]}" --model "$dir/bpe/tokenizer.model" --separator $'\n\n' --out "$dir/split"
check "$dir/split" $'\n\n' "${licences[0]}"
"$lasp" tokenize --input "${licences[@]}" --vocab-size 900 --out "$dir/bpe"  # an earlier output is replaced
check "$dir/bpe" "" "${licences[@]}"

# One line of 35 KB: SentencePiece's trainer drops lines over 4,192 bytes (the file used to fail as "empty");
# lasp hands it over in pieces
tr '\n' ' ' < "${licences[0]}" > "$dir/oneline.txt"
"$lasp" tokenize --input "$dir/oneline.txt" --vocab-size 600 --out "$dir/oneline"
check "$dir/oneline" "" "$dir/oneline.txt"

# More text encoded with the tokenizer already in --out (it is read before the new folder is swapped in)
"$lasp" tokenize --input "${licences[0]}" --model "$dir/split/tokenizer.model" --out "$dir/split"
check "$dir/split" "" "${licences[0]}"

# A model trained by Python with SentencePiece's defaults (unigram, NFKC, dummy prefix)
/usr/bin/python3 -c "
import sentencepiece as spm, sys
spm.SentencePieceTrainer.train(input=sys.argv[1], model_prefix=sys.argv[2], vocab_size=600, minloglevel=2)
spm.SentencePieceTrainer.train(input=sys.argv[1], model_prefix=sys.argv[3], vocab_size=600, bos_id=-1, minloglevel=2)
" "${licences[1]}" "$dir/python" "$dir/nobos"
"$lasp" tokenize --input "${licences[@]}" --model "$dir/python.model" --out "$dir/given"
/usr/bin/python3 - "$dir/given" "${licences[@]}" <<'PY'
import glob, sys
import numpy as np, sentencepiece as spm
out, files = sys.argv[1], sys.argv[2:]
sp = spm.SentencePieceProcessor(model_file=out + "/tokenizer.model")
tokens = np.fromfile(out + "/tokens_000000.bin", dtype="<u2")[512:]
expected = sum(([sp.bos_id()] + sp.encode(open(f, encoding="utf-8").read()) for f in files), [])
assert (tokens == np.array(expected)).all()
print(f"given .model: {len(tokens)} tokens equal python3-sentencepiece's")
PY

# Training follows the tokenizer's vocabulary, and the checkpoint keeps the tokenizer: eval reports bits per
# byte of the text the targets decode to, generate reads and writes text
"$lasp" train --data "$dir/bpe/tokens_*.bin" --seq-len 128 --steps 3 --save "$dir/ckpt" 2> "$dir/train.log" > /dev/null
grep -q "vocabulary 900 from" "$dir/train.log" || { cat "$dir/train.log"; exit 1; }
grep -q "documents open at token 1 (the BOS of $dir/bpe/tokenizer.model" "$dir/train.log" || { cat "$dir/train.log"; exit 1; }
cmp "$dir/ckpt/tokenizer.model" "$dir/bpe/tokenizer.model"
"$lasp" eval --checkpoint "$dir/ckpt" --data "$dir/bpe/tokens_*.bin" --seq-len 128 --batches 5 --json 2> /dev/null \
  | tail -n 1 > "$dir/eval.json"
/usr/bin/python3 - "$dir/eval.json" "$dir/bpe" <<'PY'
import glob, json, math, sys
import numpy as np, sentencepiece as spm
r, out = json.load(open(sys.argv[1])), sys.argv[2]
sp = spm.SentencePieceProcessor(model_file=out + "/tokenizer.model")
tokens = np.concatenate([np.fromfile(p, dtype="<u2")[512:] for p in sorted(glob.glob(out + "/tokens_*.bin"))])
N, K = 128, 5
# the targets of window k are tokens k N + 1 .. k N + N; the licences are ASCII, so bytes are characters
nbytes = sum(len(sp.decode([int(t) for t in tokens[k * N + 1:k * N + N + 1] if t != sp.bos_id()]).encode()) for k in range(K))
assert r["bytes"] == nbytes, (r["bytes"], nbytes)
assert abs(r["bits_per_byte"] - r["loss"] * r["tokens"] / math.log(2) / nbytes) < 1e-9, r
print(f"eval: {r['bits_per_byte']:.4f} bits per byte over {nbytes} bytes (loss {r['loss']:.4f} over {r['tokens']} tokens)")
PY
"$lasp" generate --checkpoint "$dir/ckpt" --prompt $'GNU GENERAL\nPUBLIC' --max-new-tokens 20 > "$dir/generated.txt"
head -c 18 "$dir/generated.txt" | cmp - <(printf 'GNU GENERAL\nPUBLIC')
/usr/bin/python3 -c "open('$dir/generated.txt', encoding='utf-8').read()"  # valid UTF-8 text

refused() {  # refused TEXT ARGS...: lasp fails, saying TEXT
  local text=$1
  shift
  if "$lasp" "$@" > "$dir/refused.log" 2>&1; then echo "expected a refusal: $*"; exit 1; fi
  grep -qF -- "$text" "$dir/refused.log" || { echo "expected '$text' from: $*"; cat "$dir/refused.log"; exit 1; }
  echo "refused: $text"
}
: > "$dir/empty.txt"
mkdir "$dir/foreign" && echo keep > "$dir/foreign/notes.txt"
refused "token shards hold uint16 ids" tokenize --input "${licences[0]}" --vocab-size 70000 --out "$dir/x1"
refused "empty document in $dir/empty.txt" tokenize --input "${licences[0]}" "$dir/empty.txt" --model "$dir/python.model" --out "$dir/x2"
refused "not a lasp tokenize output" tokenize --input "${licences[0]}" --vocab-size 500 --out "$dir/foreign"
refused "not a SentencePiece model" tokenize --input "${licences[0]}" --model "${licences[1]}" --out "$dir/x3"
printf 'caf\xe9\n' > "$dir/latin1.txt"
refused "$dir/latin1.txt is not UTF-8 text: the byte at offset 3 (line 1), 0xe9" \
  tokenize --input "${licences[0]}" "$dir/latin1.txt" --vocab-size 500 --out "$dir/x6"
refused "needs at least 3" tokenize --input "${licences[0]}" --vocab-size 300 --out "$dir/x7"
refused "has no BOS piece" tokenize --input "${licences[0]}" --model "$dir/nobos.model" --out "$dir/x4"
refused "contradicts --model" tokenize --input "${licences[0]}" --model "$dir/python.model" --vocab-size 5 --out "$dir/x5"
refused "smaller than that of the data's tokenizer" train --data "$dir/bpe/tokens_*.bin" --seq-len 64 --steps 1 --vocab 256
refused "--doc-start must be a token of the model's vocabulary [0, 900) or -1 for none, got 900" \
  train --data "$dir/bpe/tokens_*.bin" --seq-len 64 --steps 1 --doc-start 900
refused "--doc-start: must be a finite number >= -1, got -2" \
  eval --checkpoint "$dir/ckpt" --data "$dir/bpe/tokens_*.bin" --seq-len 64 --doc-start -2
# a byte-level checkpoint with a tokenizer of more pieces than its vocabulary
"$lasp" train --data "${licences[0]}" --seq-len 32 --steps 1 --layer-types LN --hidden 32 --save "$dir/bytes" 2> /dev/null
cp "$dir/bpe/tokenizer.model" "$dir/bytes/tokenizer.model"
refused "has 900 pieces, more than the model's vocabulary of 256" generate --checkpoint "$dir/bytes" --prompt hi
test -e "$dir/foreign/notes.txt"
echo "tokenize agrees with python3-sentencepiece"
