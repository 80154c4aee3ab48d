#!/usr/bin/env bash
# What we run when a GPU is lent (nothing else in the project needs one): the CUDA parity tests, then
# the training benchmark of the paper-size preset in bf16 (B=32 x 15 s; the masked and unmasked RNN-T
# branch at half that batch), then a profile. Figures: BENCHMARKS.md, "Training throughput on a GPU".
#   bash benchmarks/gpu.sh [OUT_DIR]      # logs go to OUT_DIR (default ./gpu-out)
# GPU_FP32=1 adds fp32 reference rows, GPU_COMPILE=1 a torch.compile run. BEFORE_SRC=DIR adds the same bf16 JUST rows from the src tree DIR (before/after of a change).
# Needs a python with torch (CUDA build), pyyaml, numpy, tqdm and pytest; uses src/ directly (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
B=${GPU_BATCH:-32} S=${GPU_SECONDS:-15} B2=$((B / 2))
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/nvidia-smi.txt"
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
echo "== CUDA parity tests"
$py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model_encoder.py tests/test_w2vbert_losses.py 2>&1 | tee "$out/test_cuda.txt"
echo "== paper-size preset (w2v-bert-xl), B=$B x ${S}s, bf16, masked branch"
$py benchmarks/train_step.py --device cuda --presets w2v-bert-xl --only bf16 --batch "$B" --seconds "$S" \
    --repeats 10 --warmup 3 2>&1 | tee "$out/xl-bf16.txt"
if [ "${GPU_COMPILE:-0}" = 1 ]; then  # failed to compile under torch 2.11 (BENCHMARKS.md)
  echo "== w2v-bert-xl bf16 JUST with the conformer blocks through torch.compile"
  $py benchmarks/train_step.py --device cuda --presets w2v-bert-xl --only bf16,just --batch "$B" --seconds "$S" \
      --repeats 10 --warmup 3 --compile 2>&1 | tee "$out/xl-bf16-compile.txt"
fi
if [ -n "${BEFORE_SRC:-}" ]; then  # before/after of a change: an older src tree (git archive COMMIT src configs)
  echo "== before: w2v-bert-xl bf16 from $BEFORE_SRC"
  $py benchmarks/train_step.py --device cuda --src "$BEFORE_SRC" --presets w2v-bert-xl --only bf16,just \
      --batch "$B" --seconds "$S" --repeats 10 --warmup 3 2>&1 | tee "$out/xl-bf16-before.txt"
fi
echo "== w2v-bert-xl bf16 pruned JUST at half the batch, masked and unmasked (the presets' default; two encoder passes)"
for branch in masked unmasked; do
  $py benchmarks/train_step.py --device cuda --presets w2v-bert-xl --only bf16,pruned,just --rnnt-branch $branch \
      --batch "$B2" --seconds "$S" --repeats 10 --warmup 3 2>&1 | tee "$out/xl-bf16-half-$branch.txt"
done
if [ "${GPU_FP32:-0}" = 1 ]; then
  echo "== w2v-bert-xl fp32 (reference), pruned"
  $py benchmarks/train_step.py --device cuda --presets w2v-bert-xl --only fp32,pruned --batch "$B" --seconds "$S" \
      --repeats 5 --warmup 2 2>&1 | tee "$out/xl-fp32.txt"
fi
echo "== profile: w2v-bert-xl bf16 pruned JUST"
$py benchmarks/train_step.py --device cuda --presets w2v-bert-xl --only bf16,pruned,just --batch "$B" --seconds "$S" \
    --repeats 3 --warmup 2 --profile --top 25 2>&1 | tee "$out/xl-profile.txt"
