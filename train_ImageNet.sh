#!/usr/bin/env bash
# The paper's ImageNet recipe (fine-tuning a pretrained full-precision model): 50 epochs,
# batch 256, Adam lr 1e-4 (x0.2 at 30, x0.2 at 40, x0.5 at 45), weight decay 5e-6.
#   PRETRAINED=resnet18-f37072fd.pth DATA_PATH=/data/imagenet bash train_ImageNet.sh
#   ARCH=resnet18b_fq_lq_tern_tex_2 PRETRAINED=resnet18.pth bash train_ImageNet.sh --ngpu 2
# DATA_PATH holds train/ and val/ ImageFolders. PRETRAINED is a torchvision state_dict file
# of the full-precision twin (leave it empty to train from scratch). Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
ARCH=${ARCH:-resnet18b_ff_lf_tex1}
DATA_PATH=${DATA_PATH:-./data/imagenet}
SAVE_PATH=${SAVE_PATH:-./save/imagenet_${ARCH}}
PRETRAINED=${PRETRAINED:-}
WORKERS=${WORKERS:-8}

pretrained_flag=()
[ -n "$PRETRAINED" ] && pretrained_flag=(--pretrained "$PRETRAINED")
exec "$PYTHON" main.py --dataset imagenet --data_path "$DATA_PATH" --arch "$ARCH" --save_path "$SAVE_PATH" \
    --epochs 50 --optimizer Adam --learning_rate 1e-4 --decay 5e-6 --batch_size 256 \
    --schedule 30 40 45 --gammas 0.2 0.2 0.5 --workers "$WORKERS" --print_freq 100 \
    "${pretrained_flag[@]}" "$@"
