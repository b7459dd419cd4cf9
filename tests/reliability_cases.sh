#!/bin/bash
# The hostile command lines of issue 15, one line of result each: run it against an old and a new lasp binary to
# compare (exit status and last output line per case). Runs in the current folder, which it fills with scratch
# files; needs a text file text.txt there. usage: tests/reliability_cases.sh path/to/lasp
L=$1; M="--seq-len 32 --hidden 32 --heads 2 --kv-heads 1 --ffn 64"
t() { name=$1; shift; out=$("$@" 2>&1); rc=$?; echo "[$name] rc=$rc :: $(echo "$out" | tail -1 | cut -c1-150)"; }
rm -rf d f ck* *.bin m.jsonl
mkdir d; echo x > d/notes; t save_onto_folder $L train --data text.txt $M --steps 1 --save d; echo "   notes: $(cat d/notes 2>&1)"
echo precious > f; t save_onto_file $L train --data text.txt $M --steps 1 --save f; echo "   f: $(cat f 2>&1 | head -c 40)"
t metrics_full_disk $L train --data text.txt $M --steps 1 --metrics /dev/full
t bench_sp_unwritable $L bench sp --seq-lens 64 --repeats 1 --methods lasp2 --models LL --out /nonexistent/x
t diverge_noclip $L train --data text.txt $M --steps 12 --lr 1e3 --grad-clip 0 --save ckd
t diverge_clip $L train --data text.txt $M --steps 12 --lr 1e3
t ok_ckpt $L train --data text.txt $M --steps 1 --save ck
python3 - <<'PY'
import struct
b=bytearray(open('ck/model.safetensors','rb').read()); n=struct.unpack('<Q',b[:8])[0]; b[:8]=struct.pack('<Q',n-1); open('ck_short.safetensors','wb').write(b)
PY
mkdir ck2; cp ck/config.json ck2/; cp ck_short.safetensors ck2/model.safetensors
t header_one_short $L eval --checkpoint ck2 --data text.txt --seq-len 32
cp text.txt train_000.bin; t bin_without_magic $L train --data train_000.bin $M --steps 1
for v in 4294967297 1e3 4x; do t synthetic_pairs_$v $L train --data synthetic:pairs=$v --seq-len 64 --hidden 32 --heads 2 --steps 1; done
t ok_resume_ckpt $L train --data text.txt $M --steps 4 --stop-at 1 --save ck3
for v in 1099511627776 1.5 2147483647; do python3 -c "import json;s=json.load(open('ck3/trainer_state.json'));s['step']=$v;json.dump(s,open('ck3/trainer_state.json','w'))"; t state_step_$v $L train --data text.txt $M --steps 4 --resume ck3; done
for v in "--min-lr -1" "--min-lr nan" "--warmup -1" "--grad-clip -1" "--grad-clip nan"; do t "flag $v" $L train --data text.txt $M --steps 1 $v; done
t empty_layer_types $L train --data text.txt $M --steps 1 --layer-types ''
t resume_contradicts $L train --data text.txt --seq-len 32 --hidden 64 --steps 4 --resume ck
for v in 0 -1 nan; do t project_link_$v $L bench project --link-gbit $v; done
t batch_intmax $L train --data text.txt $M --steps 1 --batch 2147483647
t max_new_tokens $L generate --checkpoint ck --prompt hi --max-new-tokens 2147483647
t params_wrap timeout 60 $L train --data text.txt --seq-len 32 --hidden 1073741824 --heads 2 --ffn 1073741824 --steps 1
# Issue 27: tokenize, documents, text checkpoints, stdout
lic=/usr/share/common-licenses/GPL-3
rm -rf hf o tok tokbig ckd6 cks
mkdir hf; echo '{"model_type":"llama"}' > hf/config.json; head -c1000 /dev/urandom > hf/model.safetensors
t save_onto_hf_export $L train --data synthetic --layer-types L --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --seq-len 256 --steps 1 --save hf; echo "   hf: $(ls hf | tr '\n' ' ')"
mkdir o; echo mine > o/tokens_myshards.bin; echo mine > o/tokenizer.model
t tokenize_onto_foreign $L tokenize --input $lic --vocab-size 400 --out o; echo "   o: $(cat o/tokens_myshards.bin o/tokenizer.model | tr '\n' ' ')"
t tokenize_ok $L tokenize --input $lic --vocab-size 512 --out tok --shard-tokens 3000
t tokenize_rerun_vocab_70000 $L tokenize --input $lic --vocab-size 70000 --out tok; echo "   tok: $(ls tok | wc -l) files"
mv tok/tokens_000002.bin tokens_away.bin; t partial_shard_set $L train --data 'tok/tokens_*.bin' $M --steps 1; mv tokens_away.bin tok/tokens_000002.bin
t doc_start_saved $L train --data text.txt $M --steps 2 --doc-start 10 --save ckd6
t doc_start_contradicts $L eval --checkpoint ckd6 --data text.txt --seq-len 32 --doc-start -1
t subword_ckpt $L train --data 'tok/tokens_*.bin' $M --steps 1 --save cks; mv cks/tokenizer.model cks/away.model
t subword_without_tokenizer $L generate --checkpoint cks --prompt The; t subword_eval_on_bytes $L eval --checkpoint cks --data text.txt --seq-len 32
t generate_to_dev_full sh -c "$L generate --checkpoint ck --prompt The --max-new-tokens 4 > /dev/full"
# Issue 27, items 5 and 10-13
rm -rf tokl tokv toko tokp ckr ckl ckw
printf 'first line\ncaf\xe9\n' > latin1.txt; t latin1_input $L tokenize --input $lic latin1.txt --vocab-size 400 --out tokl
t latin1_replace $L tokenize --input $lic latin1.txt --vocab-size 400 --out tokl --invalid-utf8 replace
t vocab_too_small $L tokenize --input $lic --vocab-size 100 --out tokv
t vocab_too_large $L tokenize --input $lic --vocab-size 60000 --out tokv
tr '\n' ' ' < $lic > oneline.txt; t one_long_line $L tokenize --input oneline.txt --vocab-size 400 --out toko
mv cks/away.model cks/tokenizer.model
t generate_10000_tokens_seconds /usr/bin/time -f %e sh -c "$L generate --checkpoint cks --prompt The --max-new-tokens 10000 > /dev/null 2>&1"
$L train --data text.txt $M --steps 100000 --save ckl > /dev/null 2>&1 & holder=$!; sleep 2
t second_run_same_save $L train --data text.txt $M --steps 1 --save ckl; kill $holder; wait $holder 2>/dev/null
for v in "--hidden ''" "--vocab ''" "--doc-start ''" "--seq-len 0x100" "--doc-start 0x1" "--seed -1" "--precision 1" "--memory-limit 1e308" "--sp-method ring-zigzag --sp-layout contiguous"; do
  eval t "\"flag $v\"" $L train --data text.txt --layer-types L --heads 2 --kv-heads 1 --ffn 64 --steps 1 $v; done
t vocab_size_space $L tokenize --input $lic --vocab-size ' 300' --out tokp
t ok_resume_ckr $L train --data text.txt $M --steps 6 --stop-at 3 --seed 7 --save ckr
t stop_at_before_saved $L train --data text.txt $M --steps 6 --resume ckr --stop-at 2
t resume_other_seed $L train --data text.txt $M --steps 6 --resume ckr --seed 8
t resume_other_data $L train --data $lic $M --steps 6 --resume ckr
t resume_other_precision $L train --data text.txt $M --steps 6 --resume ckr --precision bf16
t empty_prompt $L generate --checkpoint ck --prompt '' --max-new-tokens 5
t generate_np2_without_sp_size env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader mpirun --oversubscribe -np 2 $L generate --checkpoint ck --prompt hi --max-new-tokens 3
