#!/usr/bin/env bash
# Issue 11's GPU figures in one run, for a session that is lent a GPU (`device` tool; see
# /work/.library/device/README.md for getting kdx's packages there). About 5-8 minutes on one H100:
#   1. kdx against plain PyTorch KD, resnet56 -> resnet20 on CIFAR-10-shaped data (target >= 3x), and
#      what a 200-epoch resnet20 student takes at kdx's rate;
#   2. S=8 fused resnet20s against 8 solo runs on the same data (target >= 3x), and the fused 1-D CNNs.
# Results print to stdout; fused_speed also writes benchmarks/results/fused_speed_cuda.json.
#
#   PYTHON=python3 bash benchmarks/gpu_checks.sh 2>&1 | tee $OUT/gpu_checks.log
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
$PY benchmarks/train_speed.py --device cuda --epochs 3 --only CIFAR-10-shaped
$PY benchmarks/fused_speed.py --device cuda --reps 3 --only CIFAR-10-shaped --only mnist1d
