#!/usr/bin/env bash
# Regenerates the seed corpus in tests/fuzz/corpus/: the files a tiny `lasp train` run writes (config.json,
# model.safetensors, trainer_state.json) plus small hand-made valid and hostile variants (python3).
# Usage: tests/fuzz/make_corpus.sh [LASP_BINARY]   (default build/lasp; build it first)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lasp=${1:-$root/build/lasp}
out=$root/tests/fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

head -c 3000 /usr/share/common-licenses/GPL-3 >"$work/text.txt"
(cd "$work" && OMP_NUM_THREADS=1 "$lasp" train --data text.txt --layer-types LN --hidden 8 --heads 2 --kv-heads 1 \
  --ffn 16 --seq-len 16 --steps 2 --save ckpt >/dev/null 2>&1)
mkdir -p "$out"/{fuzz_safetensors,fuzz_config,fuzz_shards,fuzz_trainer_state,fuzz_tokenizer_model,fuzz_manifest,fuzz_jsonl}
cp "$work/ckpt/model.safetensors" "$out/fuzz_safetensors/lasp_model.safetensors"
cp "$work/ckpt/config.json" "$out/fuzz_config/lasp_tiny.json"
cp "$work/ckpt/trainer_state.json" "$out/fuzz_trainer_state/lasp_state.json"
cp "$work/ckpt/lasp_checkpoint.json" "$out/fuzz_manifest/lasp_checkpoint.json"
# A tokenizer lasp trains (the smallest vocabulary of the text: 3 special pieces, 256 bytes, its characters)
# and one with SentencePiece's defaults but the normalization (unigram, a dummy prefix, extra whitespace
# removed; identity instead of NFKC, whose table is 240 KB), trained by python3-sentencepiece
(cd "$work" && "$lasp" tokenize --input text.txt --vocab-size 330 --out tok --shard-tokens 500 >/dev/null 2>&1)
cp "$work/tok/tokenizer.model" "$out/fuzz_tokenizer_model/lasp_bpe.model"
cp "$work/tok/tokens.json" "$out/fuzz_manifest/tokens.json"
/usr/bin/python3 -c "
import sentencepiece as spm, sys
spm.SentencePieceTrainer.train(input=sys.argv[1], model_prefix=sys.argv[2], vocab_size=330, byte_fallback=True,
                               normalization_rule_name='identity', minloglevel=2)" "$work/text.txt" "$work/python"
cp "$work/python.model" "$out/fuzz_tokenizer_model/python_unigram.model"
head -c 700 "$work/python.model" > "$out/fuzz_tokenizer_model/truncated.model"
: > "$out/fuzz_tokenizer_model/empty.model"

/usr/bin/python3 - "$out" <<'EOF'
import json, struct, sys
out = sys.argv[1]

def put(harness, name, data):
    with open(f"{out}/{harness}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# safetensors: header length, JSON header padded to 8 bytes, data
def st(header, data=b"", pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad: h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data
f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-30, 7)
put("fuzz_safetensors", "f32.safetensors", st({"__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [24, 24]}}, f32))
put("fuzz_safetensors", "dtypes.safetensors", st({
    "b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
    "h": {"dtype": "F16", "shape": [3], "data_offsets": [4, 10]},
    "d": {"dtype": "F64", "shape": [1], "data_offsets": [10, 18]},
    "i": {"dtype": "I64", "shape": [], "data_offsets": [18, 26]}},
    struct.pack("<2H", 0x3f80, 0xc000) + struct.pack("<3H", 0x3c00, 0x0001, 0x7c00) + struct.pack("<d", 2.5)
    + struct.pack("<q", -1)))
put("fuzz_safetensors", "overlap.safetensors", st({
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
put("fuzz_safetensors", "past_end.safetensors", st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)))
put("fuzz_safetensors", "huge_shape.safetensors", st({"a": {"dtype": "F32", "shape": [4294967296, 4294967296],
    "data_offsets": [0, 0]}}))
put("fuzz_safetensors", "header_too_long.safetensors", struct.pack("<Q", 1 << 40) + b"{}")

# model config.json
put("fuzz_config", "default.json", "{}")
put("fuzz_config", "all_keys.json", json.dumps({"model_type": "linear_llama3", "vocab_size": 50304,
    "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 64, "layer_types": "LLNLLN", "linear_attention": {"feature_map": "elu1",
    "decay": "retention", "output_norm": False, "output_gate": False}, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": True}, indent=2))
put("fuzz_config", "linear_only.json", json.dumps({"layer_types": "LL", "num_hidden_layers": 2, "hidden_size": 64,
    "num_attention_heads": 2, "linear_attention": {"feature_map": "relu", "decay": "lightning"}}))
put("fuzz_config", "bad_heads.json", json.dumps({"hidden_size": 100, "num_attention_heads": 3, "head_dim": 33}))
put("fuzz_config", "extremes.json", json.dumps({"rms_norm_eps": 3.4028234663852886e38, "rope_theta": 1e-45,
    "vocab_size": 2147483647, "hidden_size": 4294967296}))

# llm.c token shards: 256 int32 header (magic, version, count), then uint16 tokens
def shard(tokens, count=None, magic=20240520, version=1):
    h = struct.pack("<3i", magic, version, len(tokens) if count is None else count) + bytes(1024 - 12)
    return h + struct.pack(f"<{len(tokens)}H", *tokens)
toks = [(i * 7919) % 50257 for i in range(200)] + [65535]
put("fuzz_shards", "valid.bin", shard(toks))
put("fuzz_shards", "zero_tokens.bin", shard([]))
put("fuzz_shards", "three_shards.bin", shard([1, 2, 3]) + b"LASPSHRD" + shard([]) + b"LASPSHRD" + shard([9, 8]))
put("fuzz_shards", "truncated.bin", shard(toks[:10], count=11))
put("fuzz_shards", "bad_version.bin", shard(toks[:4], version=2))
put("fuzz_shards", "text.txt", "Once upon a time, a byte-level text file.\n")

# trainer_state.json
base = {"batch": 1, "data": "text.txt", "dp_size": 1, "sampler": "lasp-window-sampler-v1 steps 2 rng 5489",
        "seed": 1234, "seq_len": 16, "sp_layout": "contiguous", "sp_size": 1, "step": 2}
put("fuzz_trainer_state", "short_sampler.json", json.dumps(base, indent=2))
put("fuzz_trainer_state", "wrap.json", json.dumps(dict(base, step=2147483647, seed=18446744073709551615,
    batch=4294967297)))
put("fuzz_trainer_state", "fraction.json", json.dumps(dict(base, step=2.5, seq_len=-16)))

# markers: tokens.json (tokenize's manifest) and lasp_checkpoint.json
shards = [{"file": "tokens_000000.bin", "tokens": 5}, {"file": "tokens_000001.bin", "tokens": 7}]
tokens = {"format": "lasp tokens", "version": 1, "tokenizer": "tokenizer.model", "vocab_size": 330, "bos": 1,
          "documents": 1, "bytes": 3000, "tokens": 12, "shards": shards}
put("fuzz_manifest", "tokens_matching.json", json.dumps(tokens))
put("fuzz_manifest", "tokens_partial.json", json.dumps(dict(tokens, shards=shards + [{"file": "tokens_000002.bin",
    "tokens": 1}])))
put("fuzz_manifest", "tokens_bad_entries.json", json.dumps(dict(tokens, shards=[{"file": 3, "tokens": "5"}, [], None,
    {"file": "tokens_000000.bin", "tokens": 18446744073709551615}])))
put("fuzz_manifest", "tokens_newer.json", json.dumps(dict(tokens, version=99)))
checkpoint = {"format": "lasp checkpoint", "version": 1, "vocabulary": "bytes", "doc_start": 10}
put("fuzz_manifest", "checkpoint_bytes.json", json.dumps(checkpoint))
put("fuzz_manifest", "checkpoint_tokenizer.json", json.dumps(dict(checkpoint, vocabulary="tokenizer 0123456789abcdef")))
put("fuzz_manifest", "checkpoint_doc_start.json", json.dumps(dict(checkpoint, doc_start=-5)))
put("fuzz_manifest", "checkpoint_wrap.json", json.dumps(dict(checkpoint, doc_start=4294967306)))

# corpora (fuzz_jsonl): a mode byte (0 x.jsonl; 1, 2 x.jsonl.gz, x.jsonl.zst as they are; 3, 4 compressed whole by
# the harness; 5, 6 compressed and cut; 7 text between separators), a flags byte (1 skip bad lines, 2 replace
# invalid UTF-8, 4 the field "t", 8 the separator "\n%\n"), then the bytes
import gzip, subprocess
lines = ('{"text": "one document"}\n{"id": 2, "text": "caf\\u00e9 \\ud83d\\ude42\\n\\"quoted\\"", "t": "x"}\n\n'
         '{"t": "other field", "meta": {"a": [1, 2.5, null, true]}}\r\n').encode()
bad = lines + b'not json\n{"text": 3}\n{"text": ""}\n[1]\n{"text": "caf\xe9"}\n{"text": "cut'
for mode in range(7):
    put("fuzz_jsonl", f"mode{mode}.bin", bytes([mode, 0]) + lines)
put("fuzz_jsonl", "gzip.bin", bytes([1, 0]) + gzip.compress(lines))
put("fuzz_jsonl", "zstd.bin", bytes([2, 0]) + subprocess.run(["zstd", "-c"], input=lines, capture_output=True,
                                                              check=True).stdout)
put("fuzz_jsonl", "bad.bin", bytes([0, 0]) + bad)
put("fuzz_jsonl", "bad_skipped.bin", bytes([0, 3]) + bad)
put("fuzz_jsonl", "bad_gzip.bin", bytes([3, 1]) + bad)
put("fuzz_jsonl", "separated.bin", bytes([7, 8]) + b"first\n%\nsecond\nline\n%\n\n%\nlast\n%\n")
EOF
ls -l "$out"/*
