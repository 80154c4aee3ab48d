#!/usr/bin/env bash
# The paper's experiment in miniature: JUST against its baselines on the imbalanced offline
# 8-language corpus (espeak-ng speech in MLS's on-disk format), at one stated compute budget.
#
# Run it from the repository root (it cd's there itself):
#
#   recipes/synthetic/run.sh                           # everything (about two hours on 2 CPU cores)
#   recipes/synthetic/run.sh --stage 6 --stop-stage 7  # only the beta sweep and the branch comparison
#   WORK=exp/mini-seed1 SEED=1 recipes/synthetic/run.sh
#   SMOKE=1 recipes/synthetic/run.sh                  # end-to-end smoke test in a few minutes (WORK=exp/synthetic-smoke)
#
# Every stage skips work already done (stamps, --resume), so re-running after an interruption
# continues where it stopped. A training run whose settings changed since it was started is refused
# (remove its folder under $WORK/exp, or use another WORK). Results: $WORK/RESULTS.md, written by
# recipes/synthetic/make_results.py from the decode reports (never from numbers typed by hand).
#
# Stages (--stage N --stop-stage M, both inclusive; default 0..10):
#   0  synth-corpus     the offline corpus with MLS's language imbalance        -> $WORK/corpus
#   1  prepare-mls      lhotse manifests                                        -> $WORK/manifests
#   2  train-tokenizer  one SentencePiece model for all languages, and compute-cmvn
#   3  system 1         monolingual supervised RNN-T: one fit per language (--data.langs [xx])
#   4  system 2         multilingual supervised-only RNN-T
#   5  system 3         two-stage: w2v-BERT pretraining, then RNN-T fine-tuning
#   6  JUST beta sweep  JUST from scratch for each beta in $BETAS (masked branch); dev decodes
#   7  branch choice    JUST at the best dev beta with the unmasked RNN-T branch; dev decode;
#                       system 4 = the best dev run of stages 6-7 ($WORK/selection.json)
#   8  system 5         JUST fine-tuning from the stage-5 pretrained checkpoint (system 4's beta, branch)
#   9  decode           export + decode dev and test of systems 1-5 (the sweep's other runs: dev only)
#   10 results          make_results.py -> $WORK/RESULTS.md
#
# The compute budget (equal for every system): BUDGET_STEPS optimiser steps of MAX_DURATION seconds
# of audio per batch, on one device. Systems 3 and 5 split it between their stages: PRETRAIN_PERCENT
# of the steps for w2v-BERT pretraining (shared: both fine-tune the same pretrained checkpoint) and the
# rest for fine-tuning, so each sees BUDGET_STEPS steps in total. Each monolingual model gets the full
# BUDGET_STEPS (as the paper's monolingual baselines are separate full trainings; system 1 therefore
# spends 8x the steps of the others in total). BUDGET_MINUTES caps each single fit's wall time as a
# safety net; a run stopped by it is flagged in RESULTS.md (steps reached < steps planned).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# ----------------------------------------------------------------------------- settings (env overrides)
# SMOKE=1: a seconds-sized end-to-end check of the whole pipeline (2 languages, a corpus of a few
# dozen utterances, 3 steps per system, a very small model); its numbers mean nothing
if [[ ${SMOKE:-0} == 1 ]]; then
  : "${WORK:=exp/synthetic-smoke}" "${LANGS:=en pl}" "${CORPUS_HOURS:=0.01}" "${MIN_UTTS:=8}" "${EVAL_MINUTES:=0.05}"
  : "${MIN_EVAL_UTTS:=3}" "${WORDS:=2,5}" "${WORD_VOCAB:=60}" "${SPEAKERS:=2,2,2}" "${TOKENIZER_VOCAB:=128}"
  : "${BUDGET_STEPS:=3}" "${BUDGET_MINUTES:=5}" "${BETAS:=0.05 0.2}" "${PRECISION:=32}" "${MAX_DURATION:=8}"
  : "${SYNTH_JOBS:=1}"
  : "${FIT_EXTRA:=--model.arch.frontend.conv_channels 8 --model.arch.encoder.d_model 32 --model.arch.encoder.num_heads 2 \
--model.arch.encoder.ffn_dim 64 --model.arch.encoder.conv_kernel 3 --model.arch.quantizer.codebook_size 16 \
--model.arch.quantizer.code_dim 32 --model.arch.contrastive.num_layers 1 --model.arch.contrastive.final_dim 16 \
--model.arch.contrastive.num_distractors 4 --model.arch.mlm.num_layers 1 --model.arch.decoder.embed_dim 16 \
--model.arch.decoder.hidden_dim 32 --model.arch.decoder.joint_dim 32 --data.num_workers 0 \
--data.max_dev_cuts_per_lang 2 --trainer.enable_model_summary false}"
fi
python=${PYTHON:-.venv/bin/python}
just_asr=${JUST_ASR:-.venv/bin/just-asr}
WORK=${WORK:-exp/synthetic}
SEED=${SEED:-0}
LANGS=${LANGS:-"en de nl fr es it pt pl"}      # ISO codes, space separated (MLS order)
# corpus: MLS's train-hour shares over CORPUS_HOURS hours. 12 h gives en ~10.6 h, de ~28 min, nl ~22,
# fr ~15, es ~13, it ~3.5 min; pt (2.3 min) and pl (1.5 min) are lifted to the floor of MIN_UTTS
# utterances (about 3 min each at 4-10 words per utterance): en has roughly 200x Polish's audio (MLS: 431x).
CORPUS_HOURS=${CORPUS_HOURS:-12}
MIN_UTTS=${MIN_UTTS:-80}                       # train utterances floor per language
EVAL_MINUTES=${EVAL_MINUTES:-3}                # dev and test minutes per language (balanced, as MLS's)
MIN_EVAL_UTTS=${MIN_EVAL_UTTS:-40}
WORDS=${WORDS:-4,10}                           # words per utterance
WORD_VOCAB=${WORD_VOCAB:-1000}                 # words in each language's vocabulary
SPEAKERS=${SPEAKERS:-12,4,4}                   # speakers per language in train, dev, test
TOKENIZER_VOCAB=${TOKENIZER_VOCAB:-256}
MODEL_PRESET=${MODEL_PRESET:-configs/model/tiny.yaml}
MINI_CONF=${MINI_CONF:-recipes/synthetic/conf/miniature.yaml}
# the budget
BUDGET_STEPS=${BUDGET_STEPS:-800}
BUDGET_MINUTES=${BUDGET_MINUTES:-20}
MAX_DURATION=${MAX_DURATION:-20}
PRETRAIN_PERCENT=${PRETRAIN_PERCENT:-50}
WARMUP_PERCENT=${WARMUP_PERCENT:-10}           # Noam warm-up as a share of each stage's steps
VAL_CHECKS=${VAL_CHECKS:-4}                    # in-training dev validations per stage
# optimisation (Noam peak rates): from-scratch runs use LR (configs/demo.yaml's tiny-model rate);
# fine-tuning runs FT_LR on the pretrained encoder and FT_DECODER_LR on the fresh predictor and joiner
# (the regime presets' 5e-4 / 2e-3 with 5000 warm-up steps are sized for long runs)
LR=${LR:-1e-3}
FT_LR=${FT_LR:-5e-4}
FT_DECODER_LR=${FT_DECODER_LR:-1e-3}
MASK_PROB=${MASK_PROB:-0.065}                  # w2v-BERT's span-start probability (~49% of frames masked)
BETAS=${BETAS:-"0.01 0.05 0.2"}                # JUST's beta sweep (chosen on dev, never on test)
PRECISION=${PRECISION:-}                       # empty: the presets' bf16-mixed; e.g. 32
FIT_EXTRA=${FIT_EXTRA:-}                       # extra 'just-asr fit' arguments for every fit (word-split)
THREADS=${THREADS:-1}
DECODE_DEVICE=${DECODE_DEVICE:-auto}           # auto: cuda when available, else cpu
SYNTH_JOBS=${SYNTH_JOBS:-2}

stage=0
stop_stage=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --stage=*) stage=${1#*=}; shift ;;
    --stop-stage=*) stop_stage=${1#*=}; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (use --stage N --stop-stage M; settings are environment variables)" >&2; exit 2 ;;
  esac
done

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1

die() { echo "run.sh: error: $*" >&2; exit 1; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
is_int "$stage" && is_int "$stop_stage" || die "--stage and --stop-stage take integers"
is_int "$BUDGET_STEPS" && (( BUDGET_STEPS >= 2 )) || die "BUDGET_STEPS must be an integer >= 2, got '$BUDGET_STEPS'"
is_int "$BUDGET_MINUTES" && (( BUDGET_MINUTES >= 1 )) || die "BUDGET_MINUTES must be a positive integer, got '$BUDGET_MINUTES'"
is_int "$PRETRAIN_PERCENT" && (( PRETRAIN_PERCENT > 0 && PRETRAIN_PERCENT < 100 )) \
  || die "PRETRAIN_PERCENT must be an integer in 1..99, got '$PRETRAIN_PERCENT'"
[[ -x $python ]] || die "$python not found: run 'make setup' first"
[[ -x $just_asr ]] || die "$just_asr not found: run 'make setup' first"
read -r -a langs <<< "$LANGS"
(( ${#langs[@]} >= 1 )) || die "LANGS is empty"
read -r -a betas <<< "$BETAS"
(( ${#betas[@]} >= 1 )) || die "BETAS is empty"
# shellcheck disable=SC2206
fit_extra=( $FIT_EXTRA )

corpus=$WORK/corpus
manifests=$WORK/manifests
tokenizer=$WORK/tokenizer/tokenizer.model
cmvn=$WORK/cmvn.json
mkdir -p "$WORK/logs"
times=$WORK/times.tsv
commands=$WORK/commands.sh
[[ -f $commands ]] || printf '#!/usr/bin/env bash\n# every command run.sh ran, in order (appended by each invocation)\n' > "$commands"

# the two-stage split of the budget
pre_steps=$(( BUDGET_STEPS * PRETRAIN_PERCENT / 100 ))
(( pre_steps >= 1 )) || pre_steps=1
ft_steps=$(( BUDGET_STEPS - pre_steps ))
(( ft_steps >= 1 )) || die "BUDGET_STEPS=$BUDGET_STEPS leaves no fine-tuning steps after $pre_steps pretraining steps"

quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; printf '%s' "${out% }"; }

# timed NAME CMD...: run CMD with its output shown and kept in $WORK/logs/NAME.log; append its
# wall time to times.tsv (name, seconds, end time, exit status) and the command to commands.sh
timed() {
  local name=$1; shift
  local log=$WORK/logs/$name.log t0 t1 rc=0
  echo "=== $name"
  echo "\$ $(quote "$@")"
  echo "$(quote "$@")" >> "$commands"
  t0=$(date +%s.%N)
  "$@" > >(tee -a "$log") 2> >(tee -a "$log" >&2) || rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%d\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" \
    "$(date -u +%FT%TZ)" "$rc" >> "$times"
  (( rc == 0 )) || die "stage '$name' failed with exit status $rc (log: $log)"
}

manifest_list() {  # SPLIT LANG... -> manifest paths
  local split=$1; shift
  local l
  for l in "$@"; do printf '%s\n' "$manifests/mls-${l}_cuts_${split}.jsonl.gz"; done
}

max_time() {  # minutes -> DD:HH:MM:SS
  printf '00:%02d:%02d:00' $(( $1 / 60 )) $(( $1 % 60 ))
}

# fit_run NAME STEPS REGIME_PRESET LR DECODER_LR [extra fit args...]: train into $WORK/exp/NAME
fit_run() {
  local name=$1 steps=$2 regime=$3 lr=$4 dlr=$5; shift 5
  local dir=$WORK/exp/$name
  local warm=$(( steps * WARMUP_PERCENT / 100 )); (( warm >= 1 )) || warm=1
  local val=$(( steps / VAL_CHECKS )); (( val >= 1 )) || val=1
  local every=100; (( every <= steps )) || every=$steps
  local -a cmd=("$just_asr" fit --config "$MODEL_PRESET" --config "$regime" --config "$MINI_CONF"
    --data.manifest_dir "$manifests" --data.tokenizer "$tokenizer" --data.cmvn "$cmvn"
    --data.max_duration "$MAX_DURATION" --data.seed "$SEED" --seed_everything "$SEED" --model.seed "$SEED"
    --model.lr "$lr" --model.decoder_lr "$dlr" --model.warmup_steps "$warm"
    --model.arch.masking.prob "$MASK_PROB"
    --trainer.max_steps "$steps" --trainer.max_time "$(max_time "$BUDGET_MINUTES")"
    --trainer.val_check_interval "$val" --periodic_checkpoint.every_n_train_steps "$every"
    --trainer.default_root_dir "$dir")
  [[ -n $PRECISION ]] && cmd+=(--trainer.precision "$PRECISION")
  cmd+=("$@" "${fit_extra[@]}")
  local key; key="$(quote "${cmd[@]}")"
  if [[ -f $dir/.key && "$(cat "$dir/.key")" != "$key" ]]; then
    die "$dir was trained with other settings (see $dir/.key); remove it or use another WORK"
  fi
  if [[ -f $dir/.done ]]; then
    echo "=== fit $name: done already ($dir/.done)"
    return 0
  fi
  mkdir -p "$dir"
  printf '%s\n' "$key" > "$dir/.key"
  printf '%s\n' "$steps" > "$dir/.planned_steps"
  timed "fit-$name" "${cmd[@]}" --resume
  [[ -f $dir/checkpoints/last.ckpt ]] || die "fit $name finished without $dir/checkpoints/last.ckpt"
  date -u +%FT%TZ > "$dir/.done"
}

decode_device() {
  if [[ $DECODE_DEVICE == auto ]]; then
    "$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'
  else
    printf '%s\n' "$DECODE_DEVICE"
  fi
}

# decode_run NAME SPLIT LANG...: export $WORK/exp/NAME (final weights) to $WORK/models/NAME once,
# then decode SPLIT of the given languages into $WORK/decode/NAME/SPLIT (skipped when up to date)
decode_run() {
  local name=$1 split=$2; shift 2
  local exp=$WORK/exp/$name model=$WORK/models/$name out=$WORK/decode/$name/$split
  [[ -f $exp/.done ]] || die "cannot decode $name: training is not finished ($exp/.done missing; run its stage first)"
  if [[ ! -f $model/.done || $exp/.done -nt $model/.done ]]; then
    rm -rf "$model"
    timed "export-$name" "$just_asr" export "$exp/checkpoints/last.ckpt" "$model"
    date -u +%FT%TZ > "$model/.done"
  fi
  if [[ -f $out/wer.json && $out/wer.json -nt $model/.done ]]; then
    echo "=== decode $name $split: done already ($out/wer.json)"
    return 0
  fi
  rm -rf "$out"
  local -a cuts
  mapfile -t cuts < <(manifest_list "$split" "$@")
  timed "decode-$name-$split" "$just_asr" decode --model "$model" --cuts "${cuts[@]}" --out "$out" \
    --device "$DEVICE" --threads "$THREADS"
}

DEVICE=$(decode_device)
langs_csv=$(IFS=,; echo "${langs[*]}")
langs_list="[${langs_csv}]"
mini_py=recipes/synthetic/make_results.py

# the settings of this run, for RESULTS.md (rewritten by every invocation)
{
  echo "{"
  echo "  \"work\": \"$WORK\", \"seed\": $SEED, \"langs\": \"$LANGS\","
  echo "  \"budget_steps\": $BUDGET_STEPS, \"budget_minutes\": $BUDGET_MINUTES, \"max_duration\": $MAX_DURATION,"
  echo "  \"pretrain_steps\": $pre_steps, \"finetune_steps\": $ft_steps, \"pretrain_percent\": $PRETRAIN_PERCENT,"
  echo "  \"warmup_percent\": $WARMUP_PERCENT, \"lr\": \"$LR\", \"ft_lr\": \"$FT_LR\", \"ft_decoder_lr\": \"$FT_DECODER_LR\","
  echo "  \"mask_prob\": \"$MASK_PROB\", \"betas\": \"$BETAS\", \"precision\": \"${PRECISION:-preset (bf16-mixed)}\","
  echo "  \"corpus_hours\": \"$CORPUS_HOURS\", \"min_utts\": $MIN_UTTS, \"eval_minutes\": \"$EVAL_MINUTES\","
  echo "  \"min_eval_utts\": $MIN_EVAL_UTTS, \"words\": \"$WORDS\", \"word_vocab\": $WORD_VOCAB, \"speakers\": \"$SPEAKERS\","
  echo "  \"tokenizer_vocab\": $TOKENIZER_VOCAB, \"model_preset\": \"$MODEL_PRESET\", \"fit_extra\": \"$FIT_EXTRA\","
  echo "  \"threads\": $THREADS, \"decode_device\": \"$DEVICE\""
  echo "}"
} > "$WORK/settings.json"

# the machine of this invocation, appended for RESULTS.md (nproc without OMP_NUM_THREADS, which it honours)
{
  echo "$(date -u +%FT%TZ) stages $stage-$stop_stage: nproc $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)," \
    "torch threads per process $THREADS, decode device $DEVICE"
  lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)):' \
    | sed 's/  */ /g; s/^/  /' || true
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>/dev/null | sed 's/^/  /' || true; fi
} >> "$WORK/machine.txt"

# ----------------------------------------------------------------------------- 0: corpus
if (( stage <= 0 && 0 <= stop_stage )); then
  synth_args=(--hours "$CORPUS_HOURS" --imbalance mls --langs "$langs_csv" --seed "$SEED"
    --min-utts-per-lang "$MIN_UTTS" --min-eval-utts "$MIN_EVAL_UTTS" --dev-minutes "$EVAL_MINUTES"
    --test-minutes "$EVAL_MINUTES" --words "$WORDS" --vocab-size "$WORD_VOCAB" --speakers "$SPEAKERS")
  key="$(quote "${synth_args[@]}")"
  if [[ -f $corpus/.complete && "$(cat "$corpus/.complete")" == "$key" ]]; then
    echo "=== synth-corpus: $corpus is complete"
  else
    # a different (or interrupted) corpus invalidates everything derived from it
    [[ -d $corpus ]] && echo "=== synth-corpus: rebuilding $corpus (settings changed or interrupted)"
    rm -rf "$corpus" "$manifests" "$WORK/tokenizer" "$cmvn"
    timed synth-corpus "$just_asr" synth-corpus "$corpus" "${synth_args[@]}" --jobs "$SYNTH_JOBS" --no-progress
    printf '%s\n' "$key" > "$corpus/.complete"
  fi
fi

# ----------------------------------------------------------------------------- 1: manifests
if (( stage <= 1 && 1 <= stop_stage )); then
  [[ -f $corpus/.complete ]] || die "$corpus is not complete: run stage 0"
  if [[ -f $manifests/.complete && $manifests/.complete -nt $corpus/.complete ]]; then
    echo "=== prepare-mls: $manifests is complete"
  else
    rm -rf "$manifests"
    timed prepare-mls "$just_asr" prepare-mls "$corpus" "$manifests" --langs "${langs[@]}" --jobs 2 --quiet
    date -u +%FT%TZ > "$manifests/.complete"
  fi
fi

# ----------------------------------------------------------------------------- 2: tokenizer, CMVN
if (( stage <= 2 && 2 <= stop_stage )); then
  [[ -f $manifests/.complete ]] || die "$manifests is not complete: run stage 1"
  mapfile -t train_cuts < <(manifest_list train "${langs[@]}")
  if [[ -f $tokenizer && $tokenizer -nt $manifests/.complete ]]; then
    echo "=== train-tokenizer: $tokenizer exists"
  else
    timed train-tokenizer "$just_asr" train-tokenizer "${train_cuts[@]}" --vocab-size "$TOKENIZER_VOCAB" \
      --out "$WORK/tokenizer" --seed "$SEED"
  fi
  if [[ -f $cmvn && $cmvn -nt $manifests/.complete ]]; then
    echo "=== compute-cmvn: $cmvn exists"
  else
    timed compute-cmvn "$just_asr" compute-cmvn "${train_cuts[@]}" --out "$cmvn" --max-cuts 200
  fi
fi

# ----------------------------------------------------------------------------- 3: system 1, monolingual
if (( stage <= 3 && 3 <= stop_stage )); then
  for l in "${langs[@]}"; do
    fit_run "mono-$l" "$BUDGET_STEPS" configs/supervised.yaml "$LR" "$LR" --data.langs "[$l]"
  done
fi

# ----------------------------------------------------------------------------- 4: system 2, multilingual supervised
if (( stage <= 4 && 4 <= stop_stage )); then
  fit_run supervised "$BUDGET_STEPS" configs/supervised.yaml "$LR" "$LR" --data.langs "$langs_list"
fi

# ----------------------------------------------------------------------------- 5: system 3, two-stage
if (( stage <= 5 && 5 <= stop_stage )); then
  fit_run pretrain "$pre_steps" configs/w2v-bert-pretrain.yaml "$LR" "$LR" --data.langs "$langs_list"
  fit_run two-stage "$ft_steps" configs/finetune.yaml "$FT_LR" "$FT_DECODER_LR" --data.langs "$langs_list" \
    --init-from "$WORK/exp/pretrain/checkpoints/last.ckpt"
fi

# ----------------------------------------------------------------------------- 6: JUST beta sweep
if (( stage <= 6 && 6 <= stop_stage )); then
  for b in "${betas[@]}"; do
    fit_run "just-b$b" "$BUDGET_STEPS" configs/just.yaml "$LR" "$LR" --data.langs "$langs_list" \
      --model.arch.loss.ssl "$b" --model.arch.rnnt_branch masked
    decode_run "just-b$b" dev "${langs[@]}"
  done
fi

# ----------------------------------------------------------------------------- 7: masked vs unmasked branch
if (( stage <= 7 && 7 <= stop_stage )); then
  best_beta=$("$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what beta)
  echo "=== best beta on dev (masked branch): $best_beta"
  fit_run "just-b$best_beta-unmasked" "$BUDGET_STEPS" configs/just.yaml "$LR" "$LR" --data.langs "$langs_list" \
    --model.arch.loss.ssl "$best_beta" --model.arch.rnnt_branch unmasked
  decode_run "just-b$best_beta-unmasked" dev "${langs[@]}"
  "$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what final
fi

# ----------------------------------------------------------------------------- 8: system 5, JUST fine-tuning
if (( stage <= 8 && 8 <= stop_stage )); then
  [[ -f $WORK/selection.json ]] || die "$WORK/selection.json missing: run stage 7 first"
  sel=$("$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what show)
  read -r sel_run sel_beta sel_branch <<< "$sel"
  echo "=== JUST fine-tuning with system 4's choice: beta $sel_beta, $sel_branch branch (from $sel_run)"
  [[ -f $WORK/exp/pretrain/.done ]] || die "the stage-5 pretrained checkpoint is missing: run stage 5 first"
  fit_run just-finetune "$ft_steps" configs/just-finetune.yaml "$FT_LR" "$FT_DECODER_LR" --data.langs "$langs_list" \
    --model.arch.loss.ssl "$sel_beta" --model.arch.rnnt_branch "$sel_branch" \
    --init-from "$WORK/exp/pretrain/checkpoints/last.ckpt"
fi

# ----------------------------------------------------------------------------- 9: decode dev and test
if (( stage <= 9 && 9 <= stop_stage )); then
  [[ -f $WORK/selection.json ]] || die "$WORK/selection.json missing: run stage 7 first"
  sel=$("$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what show)
  read -r sel_run sel_beta sel_branch <<< "$sel"
  for split in dev test; do
    for l in "${langs[@]}"; do decode_run "mono-$l" "$split" "$l"; done
    for name in supervised two-stage "$sel_run" just-finetune; do
      decode_run "$name" "$split" "${langs[@]}"
    done
  done
fi

# ----------------------------------------------------------------------------- 10: RESULTS.md
if (( stage <= 10 && 10 <= stop_stage )); then
  "$python" "$mini_py" report --work "$WORK" --betas "$BETAS" --out "$WORK/RESULTS.md"
  echo "=== results: $WORK/RESULTS.md"
fi
