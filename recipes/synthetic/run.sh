#!/usr/bin/env bash
# The paper's experiment in miniature: JUST against its baselines on the imbalanced offline
# 8-language corpus (espeak-ng speech in MLS's on-disk format), at one stated compute budget.
#
# Run it from the repository root (it cd's there itself):
#
#   recipes/synthetic/run.sh                           # everything (see RESULTS.md for the measured time)
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
#   1  prepare-mls      lhotse manifests and fbank features (computed once)     -> $WORK/manifests
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
#
# Stages 3-8 train in two lanes side by side on a CPU-only machine (LANES=2, one torch thread each):
# stage 3 in one, stages 4-8 in the other; stage 9 waits for both. LANES=1 runs one fit at a time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SELF="$ROOT/recipes/synthetic/run.sh"          # the lanes re-run this script after the cd below
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
# corpus: MLS's train-hour shares over CORPUS_HOURS hours. 10 h gives en ~8.8 h (~30,000 utterances),
# de ~23 min, nl ~18, fr ~13, es ~11; it (2.9 min by MLS's share), pt (1.9) and pl (1.2) are lifted to
# the floor of MIN_UTTS utterances (8-10 min each at ~1 s per utterance): en has ~52x Polish's audio
# (MLS: 431x). Short utterances from a 100-word list per language: the demo's probes (docs/training.md)
# found ~250 utterances per language too few for the tiny model to learn at all in a short run, 600
# enough; 500 makes pt and pl low-resource but learnable.
CORPUS_HOURS=${CORPUS_HOURS:-10}
MIN_UTTS=${MIN_UTTS:-500}                      # train utterances floor per language
EVAL_MINUTES=${EVAL_MINUTES:-3}                # dev and test minutes per language (balanced, as MLS's)
MIN_EVAL_UTTS=${MIN_EVAL_UTTS:-40}
WORDS=${WORDS:-2,5}                            # words per utterance
WORD_VOCAB=${WORD_VOCAB:-100}                  # words in each language's vocabulary
SPEAKERS=${SPEAKERS:-8,3,3}                    # speakers per language in train, dev, test
TOKENIZER_VOCAB=${TOKENIZER_VOCAB:-128}
MODEL_PRESET=${MODEL_PRESET:-configs/model/tiny.yaml}
MINI_CONF=${MINI_CONF:-recipes/synthetic/conf/miniature.yaml}
# the budget
BUDGET_STEPS=${BUDGET_STEPS:-1800}
BUDGET_MINUTES=${BUDGET_MINUTES:-30}
MAX_DURATION=${MAX_DURATION:-20}
PRETRAIN_PERCENT=${PRETRAIN_PERCENT:-50}
WARMUP_PERCENT=${WARMUP_PERCENT:-5}            # warm-up as a share of each stage's steps (then hold, then decay)
VAL_CHECKS=${VAL_CHECKS:-4}                    # in-training dev validations per stage
# optimisation (peak rates of the wsd schedule: warm-up, hold, linear decay to 0 over the last 30% of
# each stage): from-scratch runs use LR (configs/demo.yaml's tiny-model rate); fine-tuning runs FT_LR on
# the pretrained encoder and FT_DECODER_LR on the fresh predictor and joiner
LR=${LR:-1e-3}
FT_LR=${FT_LR:-5e-4}
FT_DECODER_LR=${FT_DECODER_LR:-1e-3}
# every run that trains the RNN-T (systems 1, 2, 4 and the fine-tuning of 3 and 5) adds the same
# auxiliary CTC loss on the encoder and ramps the RNN-T weight up over RNNT_RAMP_PERCENT of its steps,
# as configs/demo.yaml (they leave the blank plateau far sooner); pretraining has no text, so neither
CTC=${CTC:-0.5}
RNNT_RAMP_PERCENT=${RNNT_RAMP_PERCENT:-10}
# w2v-BERT pretraining from scratch (systems 3 and 5): with LR and diversity weight 0.1 the tiny model's
# codebook collapsed to one code within ~150 steps (contrastive loss -> 0, all negatives excluded as
# identical); at 5e-4 with a 90-step warm-up it still collapsed; diversity weight 1.0 kept 67-79% of the codes
# in use through 450 steps (probes on this corpus, RESULTS.md)
PRETRAIN_LR=${PRETRAIN_LR:-5e-4}
PRETRAIN_WARMUP_PERCENT=${PRETRAIN_WARMUP_PERCENT:-10}
PRETRAIN_DIVERSITY=${PRETRAIN_DIVERSITY:-1.0}
# masking: w2v-BERT's span-start probability 0.065 (~49% of frames) for pretraining; JUST's runs use
# MASK_PROB (0.02, ~18% of frames, as configs/demo.yaml: the masked-branch RNN-T reads the masked pass)
PRETRAIN_MASK_PROB=${PRETRAIN_MASK_PROB:-0.065}
MASK_PROB=${MASK_PROB:-0.02}
# JUST from scratch: beta is 0 (the SSL branch not run) for the first SSL_START_PERCENT of the steps,
# then rises to beta over SSL_RAMP_PERCENT (configs/demo.yaml: from step 0 it delays leaving the
# blank plateau); JUST fine-tuning from the pretrained encoder starts with beta at once
SSL_START_PERCENT=${SSL_START_PERCENT:-20}
SSL_RAMP_PERCENT=${SSL_RAMP_PERCENT:-10}
BETAS=${BETAS:-"0.02 0.05 0.2"}                # JUST's beta sweep (chosen on dev, never on test)
PRECISION=${PRECISION:-}                       # empty: the presets' bf16-mixed; e.g. 32
FIT_EXTRA=${FIT_EXTRA:-}                       # extra 'just-asr fit' arguments for every fit (word-split)
# MONO_SPLIT=1 adds system 1b: the monolingual models again, with one system's budget split between
# them (BUDGET_STEPS / number of languages each), so that system 1 (8 x BUDGET_STEPS in all) is compared at
# the same total compute as the multilingual systems
MONO_SPLIT=${MONO_SPLIT:-1}
NPROC=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# LANES=2 trains in two concurrent processes of NPROC/2 torch threads each: the monolingual fits
# (stage 3) in one, stages 4-8 in the other (about the same time: 4200 s vs 3900 s in RESULTS.md's
# run). On 2 cores that is ~1.4x the throughput of one 2-thread process (benchmarks: 235 ms/step each vs
# 165 ms/step alone). LANES=1: one fit at a time on THREADS threads. Default (auto): 2 on a CPU-only
# machine with 2+ cores when the stages asked for include both lanes' (3 and 4-8), else 1.
LANES=${LANES:-auto}
THREADS=${THREADS:-auto}                       # torch threads per training lane (auto: the cores / LANES)
DECODE_DEVICE=${DECODE_DEVICE:-auto}           # auto: cuda when available, else cpu
DECODE_ARGS=${DECODE_ARGS:-"--method beam --beam 4 --length-norm"}   # as make demo (5-6 points below greedy)
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

LANE=${LANE:-}                                 # set by run.sh itself for its two training lanes
unset WARM_PCT                                 # fit_run's per-call warm-up override, never from outside

die() { echo "run.sh: error: $*" >&2; exit 1; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
is_int "$stage" && is_int "$stop_stage" || die "--stage and --stop-stage take integers"
is_int "$BUDGET_STEPS" && (( BUDGET_STEPS >= 2 )) || die "BUDGET_STEPS must be an integer >= 2, got '$BUDGET_STEPS'"
is_int "$BUDGET_MINUTES" && (( BUDGET_MINUTES >= 1 )) || die "BUDGET_MINUTES must be a positive integer, got '$BUDGET_MINUTES'"
[[ $MONO_SPLIT == 0 || $MONO_SPLIT == 1 ]] || die "MONO_SPLIT must be 0 or 1, got '$MONO_SPLIT'"
[[ $LANES == auto || $LANES == 1 || $LANES == 2 ]] || die "LANES must be 1, 2 or auto, got '$LANES'"
[[ $THREADS == auto ]] || { is_int "$THREADS" && (( THREADS >= 1 )); } \
  || die "THREADS must be a positive integer or auto, got '$THREADS'"
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
# shellcheck disable=SC2206
decode_args=( $DECODE_ARGS )

corpus=$WORK/corpus
manifests=$WORK/manifests
tokenizer=$WORK/tokenizer/tokenizer.model
cmvn=$WORK/cmvn.json
mkdir -p "$WORK/logs"
times=$WORK/times.tsv
commands=$WORK/commands.sh
[[ -f $commands ]] || printf '#!/usr/bin/env bash\n# every command run.sh ran, in order (appended by each invocation)\n' > "$commands"

# system 1b: each monolingual model gets BUDGET_STEPS / (number of languages)
split_steps=$(( BUDGET_STEPS / ${#langs[@]} )); (( split_steps >= 1 )) || split_steps=1

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

pct() { local v=$(( $1 * $2 / 100 )); (( v >= 1 )) || v=1; printf '%s\n' "$v"; }  # STEPS PERCENT -> steps (>= 1)

# rnnt_opts STEPS: the options every RNN-T-training fit of STEPS steps adds (auxiliary CTC, RNN-T ramp)
rnnt_opts() {
  RNNT_OPTS=(--model.arch.loss.ctc "$CTC" --model.arch.loss.rnnt_ramp_steps "$(pct "$1" "$RNNT_RAMP_PERCENT")")
}

# fit_run NAME STEPS REGIME_PRESET LR DECODER_LR [extra fit args...]: train into $WORK/exp/NAME
fit_run() {
  local name=$1 steps=$2 regime=$3 lr=$4 dlr=$5; shift 5
  local dir=$WORK/exp/$name
  local warm; warm=$(pct "$steps" "${WARM_PCT:-$WARMUP_PERCENT}")  # WARM_PCT: set by the caller only
  local val=$(( steps / VAL_CHECKS )); (( val >= 1 )) || val=1
  local every=100; (( every <= steps )) || every=$steps
  local -a cmd=("$just_asr" fit --config "$MODEL_PRESET" --config "$regime" --config "$MINI_CONF"
    --data.manifest_dir "$manifests" --data.tokenizer "$tokenizer" --data.cmvn "$cmvn"
    --data.max_duration "$MAX_DURATION" --data.seed "$SEED" --seed_everything "$SEED" --model.seed "$SEED"
    --model.lr "$lr" --model.decoder_lr "$dlr" --model.warmup_steps "$warm"
    --model.lr_schedule wsd --model.lr_decay_fraction 0.3
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
    --device "$DEVICE" --threads "$decode_threads" "${decode_args[@]}"
}

DEVICE=$(decode_device)
if [[ $LANES == auto ]]; then
  if [[ $DEVICE == cpu ]] && (( NPROC >= 2 && stage <= 3 && stop_stage >= 4 )); then LANES=2; else LANES=1; fi
fi
if [[ $THREADS == auto ]]; then THREADS=$(( NPROC / LANES > 0 ? NPROC / LANES : 1 )); fi
# decoding outside the lanes (stage 9) has every core; inside a lane, the lane's threads
if [[ -z $LANE ]]; then decode_threads=$NPROC; else decode_threads=$THREADS; fi
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
langs_csv=$(IFS=,; echo "${langs[*]}")
langs_list="[${langs_csv}]"
mini_py=recipes/synthetic/make_results.py

# the settings of this run, for RESULTS.md (rewritten by every top-level invocation; not by the lanes)
if [[ -z $LANE ]]; then
  {
    echo "{"
    echo "  \"work\": \"$WORK\", \"seed\": $SEED, \"langs\": \"$LANGS\","
    echo "  \"budget_steps\": $BUDGET_STEPS, \"budget_minutes\": $BUDGET_MINUTES, \"max_duration\": $MAX_DURATION,"
    echo "  \"pretrain_steps\": $pre_steps, \"finetune_steps\": $ft_steps, \"pretrain_percent\": $PRETRAIN_PERCENT,"
    echo "  \"warmup_percent\": $WARMUP_PERCENT, \"lr_schedule\": \"wsd (decay over the last 30%)\","
    echo "  \"lr\": \"$LR\", \"ft_lr\": \"$FT_LR\", \"ft_decoder_lr\": \"$FT_DECODER_LR\","
    echo "  \"ctc\": \"$CTC\", \"rnnt_ramp_percent\": $RNNT_RAMP_PERCENT, \"mono_split\": $MONO_SPLIT, \"mono_split_steps\": $split_steps,"
    echo "  \"pretrain_lr\": \"$PRETRAIN_LR\", \"pretrain_warmup_percent\": $PRETRAIN_WARMUP_PERCENT, \"pretrain_diversity\": \"$PRETRAIN_DIVERSITY\","
    echo "  \"pretrain_mask_prob\": \"$PRETRAIN_MASK_PROB\", \"mask_prob\": \"$MASK_PROB\","
    echo "  \"ssl_start_percent\": $SSL_START_PERCENT, \"ssl_ramp_percent\": $SSL_RAMP_PERCENT,"
    echo "  \"betas\": \"$BETAS\", \"precision\": \"${PRECISION:-preset (bf16-mixed)}\","
    echo "  \"corpus_hours\": \"$CORPUS_HOURS\", \"min_utts\": $MIN_UTTS, \"eval_minutes\": \"$EVAL_MINUTES\","
    echo "  \"min_eval_utts\": $MIN_EVAL_UTTS, \"words\": \"$WORDS\", \"word_vocab\": $WORD_VOCAB, \"speakers\": \"$SPEAKERS\","
    echo "  \"tokenizer_vocab\": $TOKENIZER_VOCAB, \"model_preset\": \"$MODEL_PRESET\", \"fit_extra\": \"$FIT_EXTRA\","
    echo "  \"lanes\": $LANES, \"threads\": $THREADS, \"decode_device\": \"$DEVICE\", \"decode_args\": \"$DECODE_ARGS\""
    echo "}"
  } > "$WORK/settings.json"

  # the machine of this invocation, appended for RESULTS.md (nproc without OMP_NUM_THREADS, which it honours)
  {
    echo "$(date -u +%FT%TZ) stages $stage-$stop_stage: nproc $NPROC, $LANES training lane(s) of" \
      "$THREADS torch thread(s) each, decode device $DEVICE"
    lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)):' \
      | sed 's/  */ /g; s/^/  /' || true
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>/dev/null | sed 's/^/  /' || true; fi
  } >> "$WORK/machine.txt"
fi

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
    timed prepare-mls "$just_asr" prepare-mls "$corpus" "$manifests" --langs "${langs[@]}" --jobs "$NPROC" \
      --compute-features --quiet
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

# ----------------------------------------------------------------------------- training lanes
# LANES=2 (the top-level invocation only): stage 3 in one child run.sh, stages 4-8 in another, at once;
# each prints its lines with a [lane] prefix and keeps its own logs; this invocation waits for both
if [[ -z $LANE ]] && (( LANES == 2 )) && (( stage <= 8 && 3 <= stop_stage )); then
  lane_pids=()
  lane_names=()
  # each lane in its own process group (setsid), so that an interrupt or a TERM of this script stops
  # the lanes' training too (background jobs of a script ignore SIGINT) instead of leaving them running
  trap 'for p in "${lane_pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done' INT TERM
  if (( stage <= 3 )); then
    LANE=mono LANES=$LANES THREADS=$THREADS setsid -w "$SELF" --stage 3 --stop-stage 3 > >(sed -u 's/^/[mono] /') 2> >(sed -u 's/^/[mono] /' >&2) &
    lane_pids+=($!); lane_names+=(mono)
  fi
  if (( stop_stage >= 4 )); then
    first=$(( stage > 4 ? stage : 4 )); last=$(( stop_stage < 8 ? stop_stage : 8 ))
    LANE=multi LANES=$LANES THREADS=$THREADS setsid -w "$SELF" --stage "$first" --stop-stage "$last" > >(sed -u 's/^/[multi] /') 2> >(sed -u 's/^/[multi] /' >&2) &
    lane_pids+=($!); lane_names+=(multi)
  fi
  lane_failed=()
  for i in "${!lane_pids[@]}"; do
    wait "${lane_pids[$i]}" || lane_failed+=("${lane_names[$i]}")
  done
  trap - INT TERM
  (( ${#lane_failed[@]} == 0 )) || die "training lane(s) ${lane_failed[*]} failed (see their [lane] lines and $WORK/logs)"
  stage=9
fi

# ----------------------------------------------------------------------------- 3: system 1, monolingual
if (( stage <= 3 && 3 <= stop_stage )); then
  rnnt_opts "$BUDGET_STEPS"
  for l in "${langs[@]}"; do
    fit_run "mono-$l" "$BUDGET_STEPS" configs/supervised.yaml "$LR" "$LR" --data.langs "[$l]" "${RNNT_OPTS[@]}"
  done
  # system 1b: the same monolingual models with one system's budget split over them
  if (( MONO_SPLIT )); then
    rnnt_opts "$split_steps"
    for l in "${langs[@]}"; do
      fit_run "mono-split-$l" "$split_steps" configs/supervised.yaml "$LR" "$LR" --data.langs "[$l]" "${RNNT_OPTS[@]}"
    done
  fi
fi

# ----------------------------------------------------------------------------- 4: system 2, multilingual supervised
if (( stage <= 4 && 4 <= stop_stage )); then
  rnnt_opts "$BUDGET_STEPS"
  fit_run supervised "$BUDGET_STEPS" configs/supervised.yaml "$LR" "$LR" --data.langs "$langs_list" "${RNNT_OPTS[@]}"
fi

# ----------------------------------------------------------------------------- 5: system 3, two-stage
if (( stage <= 5 && 5 <= stop_stage )); then
  WARM_PCT=$PRETRAIN_WARMUP_PERCENT fit_run pretrain "$pre_steps" configs/w2v-bert-pretrain.yaml \
    "$PRETRAIN_LR" "$PRETRAIN_LR" --data.langs "$langs_list" --model.arch.masking.prob "$PRETRAIN_MASK_PROB" \
    --model.arch.loss.diversity "$PRETRAIN_DIVERSITY"
  rnnt_opts "$ft_steps"
  fit_run two-stage "$ft_steps" configs/finetune.yaml "$FT_LR" "$FT_DECODER_LR" --data.langs "$langs_list" \
    "${RNNT_OPTS[@]}" --init-from "$WORK/exp/pretrain/checkpoints/last.ckpt"
fi

# read_selection: system 4's run, beta and branch (chosen on dev in stage 7) -> sel_run sel_beta sel_branch
read_selection() {
  [[ -f $WORK/selection.json ]] || die "$WORK/selection.json missing: run stage 7 first"
  local sel
  sel=$("$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what show)
  read -r sel_run sel_beta sel_branch <<< "$sel"
}

# just_opts STEPS: JUST from scratch: the masking probability and the delayed, ramped beta
just_opts() {
  rnnt_opts "$1"
  local start=$(( $1 * SSL_START_PERCENT / 100 )) ramp=$(( $1 * SSL_RAMP_PERCENT / 100 ))
  JUST_OPTS=("${RNNT_OPTS[@]}" --model.arch.masking.prob "$MASK_PROB"
    --model.arch.loss.ssl_start_step "$start" --model.arch.loss.ssl_ramp_steps "$ramp")
}

# ----------------------------------------------------------------------------- 6: JUST beta sweep
if (( stage <= 6 && 6 <= stop_stage )); then
  just_opts "$BUDGET_STEPS"
  for b in "${betas[@]}"; do
    fit_run "just-b$b" "$BUDGET_STEPS" configs/just.yaml "$LR" "$LR" --data.langs "$langs_list" \
      --model.arch.loss.ssl "$b" --model.arch.rnnt_branch masked "${JUST_OPTS[@]}"
    decode_run "just-b$b" dev "${langs[@]}"
  done
fi

# ----------------------------------------------------------------------------- 7: masked vs unmasked branch
if (( stage <= 7 && 7 <= stop_stage )); then
  best_beta=$("$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what beta)
  echo "=== best beta on dev (masked branch): $best_beta"
  just_opts "$BUDGET_STEPS"
  fit_run "just-b$best_beta-unmasked" "$BUDGET_STEPS" configs/just.yaml "$LR" "$LR" --data.langs "$langs_list" \
    --model.arch.loss.ssl "$best_beta" --model.arch.rnnt_branch unmasked "${JUST_OPTS[@]}"
  decode_run "just-b$best_beta-unmasked" dev "${langs[@]}"
  "$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what final
fi

# ----------------------------------------------------------------------------- 8: system 5, JUST fine-tuning
if (( stage <= 8 && 8 <= stop_stage )); then
  read_selection
  echo "=== JUST fine-tuning with system 4's choice: beta $sel_beta, $sel_branch branch (from $sel_run)"
  [[ -f $WORK/exp/pretrain/.done ]] || die "the stage-5 pretrained checkpoint is missing: run stage 5 first"
  rnnt_opts "$ft_steps"
  # the encoder is pretrained: beta from the first step (no delay), the same masking as system 4
  fit_run just-finetune "$ft_steps" configs/just-finetune.yaml "$FT_LR" "$FT_DECODER_LR" --data.langs "$langs_list" \
    --model.arch.loss.ssl "$sel_beta" --model.arch.rnnt_branch "$sel_branch" "${RNNT_OPTS[@]}" \
    --model.arch.masking.prob "$MASK_PROB" --init-from "$WORK/exp/pretrain/checkpoints/last.ckpt"
fi

# ----------------------------------------------------------------------------- 9: decode dev and test
if (( stage <= 9 && 9 <= stop_stage )); then
  read_selection
  for split in dev test; do
    for l in "${langs[@]}"; do decode_run "mono-$l" "$split" "$l"; done
    if (( MONO_SPLIT )); then
      for l in "${langs[@]}"; do decode_run "mono-split-$l" "$split" "$l"; done
    fi
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
