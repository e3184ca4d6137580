#!/usr/bin/env bash
# The paper's CIFAR-10 recipe (from scratch): 200 epochs, batch 128, SGD with Nesterov
# momentum 0.9, lr 0.1 (x0.1 at 80, x0.1 at 120, x0.5 at 160), weight decay 3e-4, seed 5000.
#   bash train_CIFAR10.sh                              # tern_resnet20
#   ARCH=tern_resnet56 DATA_PATH=/data/cifar bash train_CIFAR10.sh --epochs 10
#   ARCH=tern_resnet20 bash train_CIFAR10.sh --evaluate --resume save/cifar10_tern_resnet20/model_best.pth.tar
# Extra arguments are passed to main.py.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
ARCH=${ARCH:-tern_resnet20}
DATA_PATH=${DATA_PATH:-./data/cifar10}
SAVE_PATH=${SAVE_PATH:-./save/cifar10_${ARCH}}

exec "$PYTHON" main.py --dataset cifar10 --data_path "$DATA_PATH" --arch "$ARCH" --save_path "$SAVE_PATH" \
    --epochs 200 --optimizer SGD --learning_rate 0.1 --momentum 0.9 --decay 3e-4 --batch_size 128 \
    --schedule 80 120 160 --gammas 0.1 0.1 0.5 --manualSeed 5000 --print_freq 100 "$@"
