#!/usr/bin/env bash
# The paper's experiment at full scale on Multilingual LibriSpeech (MLS, 8 languages, ~50k hours):
# the five systems of recipes/synthetic/run.sh with the paper-size model (configs/model/w2v-bert-xl.yaml,
# ~0.6B parameters) on multi-GPU, multi-node hardware. Not run in this repository (no GPUs, no MLS);
# see recipes/mls/README.md for the stages, the hardware assumptions and the paper's reference numbers.
#
#   # 1. download and unpack MLS yourself (URLs in recipes/mls/README.md; the script fetches nothing)
#   MLS_DIR=/data/mls WORK=/shared/exp/mls recipes/mls/run.sh --stage 0 --stop-stage 3    # data
#   LAUNCH=slurm NODES=4 GPUS=8 MLS_DIR=/data/mls WORK=/shared/exp/mls recipes/mls/run.sh --stage 4
#   DRY_RUN=1 recipes/mls/run.sh          # print every command instead of running it
#
# Stages (--stage N --stop-stage M, inclusive; default 0..10):
#   0  check        the unpacked mls_<language>[_opus] folders are there (nothing is downloaded)
#   1  prepare-mls  lhotse manifests (FLAC or Opus release: AUDIO_FORMAT)
#   2  tokenizer    one SentencePiece model over the 8 languages; global CMVN
#   3  export-shar  Shar shards of train and dev for streaming training (small languages: smaller shards)
#   4  system 1     monolingual supervised RNN-T, one per language
#   5  system 2     multilingual supervised-only RNN-T
#   6  system 3     two-stage: w2v-BERT pretraining on the MLS audio, then RNN-T fine-tuning
#   7  system 4     JUST from scratch: beta sweep (masked branch), then the unmasked branch at the best dev
#                   beta; the dev winner is system 4 ($WORK/selection.json)
#   8  system 5     JUST fine-tuning from the stage-6 pretrained checkpoint
#   9  decode       export + decode dev and test of every system (one GPU, greedy, no LM)
#   10 results      recipes/synthetic/make_results.py -> $WORK/RESULTS.md (same tables as the miniature)
#
# Launchers (LAUNCH): "local" runs torchrun --standalone on this node (GPUS processes); "torchrun"
# runs one torchrun of a multi-node job: start this script with the same settings on every node with
# NODE_RANK=0..NODES-1 and MASTER_ADDR (stages 4-8 then train in lock-step on all nodes); "slurm" writes
# $WORK/slurm/<run>.sbatch and submits it with 'sbatch --wait' (one task per GPU, requeued on timeout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

python=${PYTHON:-.venv/bin/python}
just_asr=${JUST_ASR:-.venv/bin/just-asr}
MLS_DIR=${MLS_DIR:-/data/mls}                 # holds mls_english/ ... mls_polish/ (or mls_<language>_opus/)
WORK=${WORK:-exp/mls}                         # must be on storage every node sees
SEED=${SEED:-0}
LANGS=${LANGS:-"en de nl fr es it pt pl"}
AUDIO_FORMAT=${AUDIO_FORMAT:-flac}            # flac | opus (the Opus release is ~10x smaller)
TRAIN_SPLIT=${TRAIN_SPLIT:-train}             # or train-10hr for the limited-supervision variant
TOKENIZER_VOCAB=${TOKENIZER_VOCAB:-1024}      # the paper's unit inventory is not known (paper-notes Q2)
MODEL_PRESET=${MODEL_PRESET:-configs/model/w2v-bert-xl.yaml}
# compute budget, equal for every system (paper-notes Q5: JUST's real budget is unknown)
BUDGET_STEPS=${BUDGET_STEPS:-200000}
PRETRAIN_PERCENT=${PRETRAIN_PERCENT:-50}      # systems 3 and 5: pretraining share of the budget
MAX_DURATION=${MAX_DURATION:-400}             # seconds of audio per GPU and micro-batch
ACCUMULATE=${ACCUMULATE:-1}
BETAS=${BETAS:-"0.03 0.1 0.3"}
NODES=${NODES:-1}
GPUS=${GPUS:-8}                               # GPUs per node
NUM_WORKERS=${NUM_WORKERS:-6}
STRATEGY=${STRATEGY:-ddp_find_unused_parameters_true}   # see docs/distributed.md for why not plain ddp
LAUNCH=${LAUNCH:-local}                       # local | torchrun | slurm
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
SLURM_TIME=${SLURM_TIME:-48:00:00}
SLURM_EXTRA=${SLURM_EXTRA:-}                  # extra #SBATCH lines' options, e.g. "--partition=gpu --account=x"
FIT_EXTRA=${FIT_EXTRA:-}
DRY_RUN=${DRY_RUN:-0}

stage=0
stop_stage=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --stage=*) stage=${1#*=}; shift ;;
    --stop-stage=*) stop_stage=${1#*=}; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (use --stage N --stop-stage M; settings are environment variables)" >&2; exit 2 ;;
  esac
done

die() { echo "mls/run.sh: error: $*" >&2; exit 1; }
[[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || die "--stage and --stop-stage take integers"
[[ $BUDGET_STEPS =~ ^[0-9]+$ ]] && (( BUDGET_STEPS >= 2 )) || die "BUDGET_STEPS must be an integer >= 2"
[[ $PRETRAIN_PERCENT =~ ^[0-9]+$ ]] && (( PRETRAIN_PERCENT > 0 && PRETRAIN_PERCENT < 100 )) \
  || die "PRETRAIN_PERCENT must be an integer in 1..99"
case "$LAUNCH" in local|torchrun|slurm) ;; *) die "LAUNCH must be local, torchrun or slurm, got '$LAUNCH'" ;; esac
case "$AUDIO_FORMAT" in flac|opus) ;; *) die "AUDIO_FORMAT must be flac or opus, got '$AUDIO_FORMAT'" ;; esac
read -r -a langs <<< "$LANGS"
read -r -a betas <<< "$BETAS"
# shellcheck disable=SC2206
fit_extra=( $FIT_EXTRA )
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

manifests=$WORK/manifests
shar=$WORK/shar
tokenizer=$WORK/tokenizer/tokenizer.model
cmvn=$WORK/cmvn.json
mini_py=recipes/synthetic/make_results.py
pre_steps=$(( BUDGET_STEPS * PRETRAIN_PERCENT / 100 ))
ft_steps=$(( BUDGET_STEPS - pre_steps ))
langs_csv=$(IFS=,; echo "${langs[*]}")
langs_list="[${langs_csv}]"
declare -A mls_name=([en]=english [de]=german [nl]=dutch [fr]=french [es]=spanish [it]=italian [pt]=portuguese [pl]=polish)

quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; printf '%s' "${out% }"; }

# run NAME CMD...: print CMD; unless DRY_RUN, run it (log in $WORK/logs/NAME.log) and record its wall time
run() {
  local name=$1; shift
  echo "=== $name"
  echo "\$ $(quote "$@")"
  (( DRY_RUN )) && return 0
  mkdir -p "$WORK/logs"
  echo "$(quote "$@")" >> "$WORK/commands.sh"
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$@" > >(tee -a "$WORK/logs/$name.log") 2> >(tee -a "$WORK/logs/$name.log" >&2) || rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%d\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" \
    "$(date -u +%FT%TZ)" "$rc" >> "$WORK/times.tsv"
  (( rc == 0 )) || die "stage '$name' failed with exit status $rc (log: $WORK/logs/$name.log)"
}

# launch NAME FIT_ARGS...: 'just-asr fit FIT_ARGS' on NODES x GPUS GPUs with the chosen launcher
launch() {
  local name=$1; shift
  local -a fit=(--trainer.accelerator gpu --trainer.devices "$GPUS" --trainer.num_nodes "$NODES"
    --trainer.strategy "$STRATEGY" --trainer.accumulate_grad_batches "$ACCUMULATE" "$@" --resume)
  case "$LAUNCH" in
    local)
      run "$name" "$python" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" \
        -m just_asr.cli.main fit "${fit[@]}" ;;
    torchrun)
      run "$name" "$python" -m torch.distributed.run --nnodes "$NODES" --nproc-per-node "$GPUS" \
        --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
        -m just_asr.cli.main fit "${fit[@]}" ;;
    slurm)
      local sb=$WORK/slurm/$name.sbatch
      (( DRY_RUN )) || mkdir -p "$WORK/slurm"
      local body
      body=$(cat <<EOF
#!/bin/bash
#SBATCH --job-name=$name
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$GPUS
#SBATCH --gpus-per-node=$GPUS
#SBATCH --cpus-per-task=$(( NUM_WORKERS + 2 ))
#SBATCH --mem=0
#SBATCH --time=$SLURM_TIME
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=$WORK/logs/$name.%j.out
export OMP_NUM_THREADS=1
cd $(printf '%q' "$ROOT")
srun $(quote "$just_asr" fit "${fit[@]}")
EOF
)
      if (( DRY_RUN )); then echo "--- $sb:"; echo "$body"; fi
      (( DRY_RUN )) || printf '%s\n' "$body" > "$sb"
      # shellcheck disable=SC2086
      run "$name" sbatch --wait $SLURM_EXTRA "$sb" ;;
  esac
}

# fit_run NAME STEPS REGIME [extra fit args]: one training run into $WORK/exp/NAME, skipped when done
fit_run() {
  local name=$1 steps=$2 regime=$3; shift 3
  local dir=$WORK/exp/$name
  if [[ -f $dir/.done ]]; then echo "=== fit $name: done already"; return 0; fi
  (( DRY_RUN )) || { mkdir -p "$dir"; printf '%s\n' "$steps" > "$dir/.planned_steps"; }
  launch "fit-$name" --config "$MODEL_PRESET" --config "$regime" \
    --data.shar_dir "$shar" --data.manifest_dir "$manifests" --data.tokenizer "$tokenizer" --data.cmvn "$cmvn" \
    --data.train_split "$TRAIN_SPLIT" --data.max_duration "$MAX_DURATION" --data.num_workers "$NUM_WORKERS" \
    --data.seed "$SEED" --seed_everything "$SEED" --model.seed "$SEED" \
    --trainer.max_steps "$steps" --trainer.default_root_dir "$dir" "$@" "${fit_extra[@]}"
  # with LAUNCH=torchrun every node runs this script; only node 0 marks the run done
  if (( ! DRY_RUN )) && [[ $LAUNCH != torchrun || $NODE_RANK == 0 ]]; then date -u +%FT%TZ > "$dir/.done"; fi
}

# decode_run NAME SPLIT LANG...: export final weights and decode (one process, first GPU)
decode_run() {
  local name=$1 split=$2; shift 2
  local model=$WORK/models/$name out=$WORK/decode/$name/$split l
  local -a cuts=()
  for l in "$@"; do cuts+=("$manifests/mls-${l}_cuts_${split}.jsonl.gz"); done
  if [[ ! -f $model/.done ]]; then
    run "export-$name" "$just_asr" export "$WORK/exp/$name/checkpoints/last.ckpt" "$model"
    (( DRY_RUN )) || date -u +%FT%TZ > "$model/.done"
  fi
  if [[ -f $out/wer.json ]]; then echo "=== decode $name $split: done already"; return 0; fi
  run "decode-$name-$split" "$just_asr" decode --model "$model" --cuts "${cuts[@]}" --out "$out" \
    --device cuda --max-duration 600 --num-workers 4
}

if (( ! DRY_RUN )); then
  mkdir -p "$WORK"
  cat > "$WORK/settings.json" <<EOF
{"work": "$WORK", "seed": $SEED, "langs": "$LANGS", "budget_steps": $BUDGET_STEPS, "pretrain_steps": $pre_steps,
 "finetune_steps": $ft_steps, "pretrain_percent": $PRETRAIN_PERCENT, "max_duration": $MAX_DURATION,
 "accumulate_grad_batches": $ACCUMULATE, "nodes": $NODES, "gpus_per_node": $GPUS, "betas": "$BETAS",
 "model_preset": "$MODEL_PRESET", "train_split": "$TRAIN_SPLIT", "audio_format": "$AUDIO_FORMAT",
 "tokenizer_vocab": $TOKENIZER_VOCAB, "budget_minutes": "n/a (SLURM_TIME $SLURM_TIME per job, requeued)"}
EOF
fi

# the machine of this invocation (training nodes: NODES x GPUS), appended for RESULTS.md
if (( ! DRY_RUN )); then
  { echo "$(date -u +%FT%TZ) stages $stage-$stop_stage on $(hostname): training on $NODES node(s) x $GPUS GPU(s)" \
      "($LAUNCH); this node: nproc $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
    lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)):' | sed 's/  */ /g; s/^/  /' || true
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>/dev/null | sed 's/^/  /' || true; fi
  } >> "$WORK/machine.txt"
fi

# ----------------------------------------------------------------------------- 0: the downloaded data
if (( stage <= 0 && 0 <= stop_stage )); then
  suffix=""; [[ $AUDIO_FORMAT == opus ]] && suffix="_opus"
  missing=0
  for l in "${langs[@]}"; do
    d=$MLS_DIR/mls_${mls_name[$l]}$suffix
    if [[ -d $d/train && -d $d/dev && -d $d/test ]]; then echo "found $d"
    else echo "missing $d (download https://dl.fbaipublicfiles.com/mls/mls_${mls_name[$l]}$suffix.tar.gz and unpack it into $MLS_DIR)" >&2; missing=1; fi
  done
  (( missing == 0 || DRY_RUN )) || die "MLS is not fully unpacked under $MLS_DIR (see recipes/mls/README.md)"
fi

# ----------------------------------------------------------------------------- 1: manifests
if (( stage <= 1 && 1 <= stop_stage )); then
  if [[ -f $manifests/.complete ]]; then echo "=== prepare-mls: done already"
  else
    run prepare-mls "$just_asr" prepare-mls "$MLS_DIR" "$manifests" --langs "${langs[@]}" \
      --audio-format "$AUDIO_FORMAT" --jobs 32 --no-verify-audio --quiet
    (( DRY_RUN )) || date -u +%FT%TZ > "$manifests/.complete"
  fi
fi

# ----------------------------------------------------------------------------- 2: tokenizer, CMVN
if (( stage <= 2 && 2 <= stop_stage )); then
  train_cuts=(); for l in "${langs[@]}"; do train_cuts+=("$manifests/mls-${l}_cuts_${TRAIN_SPLIT}.jsonl.gz"); done
  [[ -f $tokenizer ]] || run train-tokenizer "$just_asr" train-tokenizer "${train_cuts[@]}" \
    --vocab-size "$TOKENIZER_VOCAB" --temperature 3.0 --out "$WORK/tokenizer" --seed "$SEED"
  [[ -f $cmvn ]] || run compute-cmvn "$just_asr" compute-cmvn "${train_cuts[@]}" --out "$cmvn" --max-cuts 2500
fi

# ----------------------------------------------------------------------------- 3: Shar shards
if (( stage <= 3 && 3 <= stop_stage )); then
  if [[ -f $shar/.complete ]]; then echo "=== export-shar: done already"
  else
    # large languages: 1000 cuts per shard; small ones (it, pt, pl) smaller shards, so that every
    # GPU x DataLoader-worker slot has its own shards (docs/distributed.md)
    big=(); small=()
    for l in "${langs[@]}"; do case $l in it|pt|pl) small+=("$l") ;; *) big+=("$l") ;; esac; done
    splits=train,dev; [[ $TRAIN_SPLIT != train ]] && splits=$TRAIN_SPLIT,dev
    (( ${#big[@]} )) && run export-shar-big "$just_asr" export-shar "$manifests" "$shar" \
      --langs "$(IFS=,; echo "${big[*]}")" --splits "$splits" --fields audio --shard-size 1000 --jobs 16
    (( ${#small[@]} )) && run export-shar-small "$just_asr" export-shar "$manifests" "$shar" \
      --langs "$(IFS=,; echo "${small[*]}")" --splits "$splits" --fields audio --shard-size 100 --jobs 16
    (( DRY_RUN )) || date -u +%FT%TZ > "$shar/.complete"
  fi
fi

# ----------------------------------------------------------------------------- 4-8: the five systems
if (( stage <= 4 && 4 <= stop_stage )); then
  for l in "${langs[@]}"; do
    fit_run "mono-$l" "$BUDGET_STEPS" configs/supervised.yaml --data.langs "[$l]"
  done
fi
if (( stage <= 5 && 5 <= stop_stage )); then
  fit_run supervised "$BUDGET_STEPS" configs/supervised.yaml --data.langs "$langs_list"
fi
if (( stage <= 6 && 6 <= stop_stage )); then
  fit_run pretrain "$pre_steps" configs/w2v-bert-pretrain.yaml --data.langs "$langs_list"
  fit_run two-stage "$ft_steps" configs/finetune.yaml --data.langs "$langs_list" \
    --init-from "$WORK/exp/pretrain/checkpoints/last.ckpt"
fi
if (( stage <= 7 && 7 <= stop_stage )); then
  for b in "${betas[@]}"; do
    fit_run "just-b$b" "$BUDGET_STEPS" configs/just.yaml --data.langs "$langs_list" \
      --model.arch.loss.ssl "$b" --model.arch.rnnt_branch masked
    decode_run "just-b$b" dev "${langs[@]}"
  done
  if (( DRY_RUN )); then best=${betas[0]}; echo "(dry run: beta ${best} stands for the dev winner)"
  else best=$("$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what beta); fi
  fit_run "just-b$best-unmasked" "$BUDGET_STEPS" configs/just.yaml --data.langs "$langs_list" \
    --model.arch.loss.ssl "$best" --model.arch.rnnt_branch unmasked
  decode_run "just-b$best-unmasked" dev "${langs[@]}"
  (( DRY_RUN )) || "$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what final
fi
selection() {
  if (( DRY_RUN )); then echo "just-b${betas[0]} ${betas[0]} masked"
  else "$python" "$mini_py" select --work "$WORK" --betas "$BETAS" --what show; fi
}
if (( stage <= 8 && 8 <= stop_stage )); then
  read -r sel_run sel_beta sel_branch <<< "$(selection)"
  fit_run just-finetune "$ft_steps" configs/just-finetune.yaml --data.langs "$langs_list" \
    --model.arch.loss.ssl "$sel_beta" --model.arch.rnnt_branch "$sel_branch" \
    --init-from "$WORK/exp/pretrain/checkpoints/last.ckpt"
fi

# ----------------------------------------------------------------------------- 9: decode
if (( stage <= 9 && 9 <= stop_stage )); then
  read -r sel_run sel_beta sel_branch <<< "$(selection)"
  for split in dev test; do
    for l in "${langs[@]}"; do decode_run "mono-$l" "$split" "$l"; done
    for name in supervised two-stage "$sel_run" just-finetune; do decode_run "$name" "$split" "${langs[@]}"; done
  done
fi

# ----------------------------------------------------------------------------- 10: tables
if (( stage <= 10 && 10 <= stop_stage )); then
  if (( DRY_RUN )); then echo "\$ $python $mini_py report --work $WORK --betas '$BETAS' --out $WORK/RESULTS.md"
  else "$python" "$mini_py" report --work "$WORK" --betas "$BETAS" --out "$WORK/RESULTS.md"; fi
fi
