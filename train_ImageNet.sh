#!/usr/bin/env bash
# The paper's ImageNet rows: fine-tune each ternarized arch from the pretrained
# full-precision twin with the paper's recipe (50 epochs, batch 256, Adam lr 1e-4 x0.2 at
# 30, x0.2 at 40, x0.5 at 45, weight decay 5e-6), and evaluate the full-precision
# ResNets' pretrained weights. One folder per run: SAVE_ROOT/imagenet/ARCH_seedSEED
# (full-precision evaluations: SAVE_ROOT/imagenet/ARCH_pretrained).
#
#   DATA_PATH=/data/imagenet bash train_ImageNet.sh                      # the whole table
#   ARCHS="resnet18b_fq_lq_tern_tex_2" PRETRAINED_DIR=~/weights bash train_ImageNet.sh --workers 16
#   torchrun-style multi-GPU: LAUNCH="torchrun --nproc_per_node 8" bash train_ImageNet.sh --batch_size 32
#   DRY_RUN=1 bash train_ImageNet.sh                                     # print the commands only
#   python -m tools.report save/imagenet
#
# Pretrained weights: PRETRAINED_DIR/<twin>.pth when it exists (twin = resnet18, resnet34,
# resnet50, resnet101 or alexnet_vanilla; torchvision's files renamed, e.g.
# resnet18-f37072fd.pth -> resnet18.pth), else torchvision's download for the ResNets
# (--pretrained torchvision, needs the network once). AlexNet-BN has no torchvision
# weights: without PRETRAINED_DIR/alexnet_vanilla.pth it trains from scratch (warned).
#
# Environment: ARCHS (below), FP_ARCHS (resnet18 resnet34 resnet50: evaluated, not trained),
# SEEDS (1), FIRST_SEED (5000), DATA_PATH (./data/imagenet, holding train/ and val/),
# PRETRAINED_DIR, WORKERS (8), SAVE_ROOT (./save), PYTHON (.venv/bin/python if present, else python), LAUNCH (empty: a
# single process; e.g. "torchrun --nproc_per_node 8"), PRECISION (auto: bf16 + channels_last
# where bf16 is native, else fp32 + channels_last; bf16 or fp32 force it; the fine-tuning runs only, the
# full-precision evaluations stay fp32), DRY_RUN, FORCE (tools/run_matrix.sh).
set -uo pipefail
cd "$(dirname "$0")"
source tools/run_matrix.sh
ARCHS=${ARCHS:-tern_alexnet_ff_lf tern_alexnet_fq_lq resnet18b_ff_lf_tex1 resnet18b_fq_lq_tex1 resnet34b_ff_lf_tex1 resnet50b_ff_lf_tex1 resnet18b_fq_lq_tern_tex_2 resnet18b_fq_lq_tern_tex_4}
FP_ARCHS=${FP_ARCHS-resnet18 resnet34 resnet50}
SEEDS=${SEEDS:-1}
FIRST_SEED=${FIRST_SEED:-5000}
DATA_PATH=${DATA_PATH:-./data/imagenet}
PRETRAINED_DIR=${PRETRAINED_DIR:-}
WORKERS=${WORKERS:-8}
SAVE_ROOT=${SAVE_ROOT:-./save}
# LAUNCH replaces "python" (e.g. torchrun); run_one calls "$PYTHON" main.py.
PYTHON=${LAUNCH:-$(matrix_python)}
PRECISION_ARGS=$(precision_args "$PYTHON") || exit 2

pretrained_flag() {  # pretrained_flag ARCH: the --pretrained argument of its full-precision twin
    local twin
    case $1 in
        *alexnet*) twin=alexnet_vanilla ;;
        resnet*) twin=${1%%b_*} ;;
        *) echo "unknown arch '$1'" >&2; return 1 ;;
    esac
    if [ -n "$PRETRAINED_DIR" ] && [ -f "$PRETRAINED_DIR/$twin.pth" ]; then
        echo "--pretrained $PRETRAINED_DIR/$twin.pth"
    elif [ "$twin" = alexnet_vanilla ]; then
        echo "warning: no alexnet_vanilla.pth in PRETRAINED_DIR='$PRETRAINED_DIR'; $1 trains from scratch" >&2
    else
        echo "--pretrained torchvision"
    fi
}

recipe=(--epochs 50 --optimizer Adam --learning_rate 1e-4 --decay 5e-6 --batch_size 256
        --schedule 30 40 45 --gammas 0.2 0.2 0.5 --workers "$WORKERS" --print_freq 100)
for arch in $FP_ARCHS; do
    pretrained=$(pretrained_flag "$arch") || exit 2
    # shellcheck disable=SC2086
    run_one "$SAVE_ROOT/imagenet/${arch}_pretrained" --dataset imagenet --data_path "$DATA_PATH" --arch "$arch" \
        $pretrained --evaluate --workers "$WORKERS" "$@"
done
for arch in $ARCHS; do
    pretrained=$(pretrained_flag "$arch") || exit 2
    for seed in $(seed_list "$SEEDS" "$FIRST_SEED"); do
        # shellcheck disable=SC2086
        run_one "$SAVE_ROOT/imagenet/${arch}_seed$seed" --dataset imagenet --data_path "$DATA_PATH" --arch "$arch" \
            $pretrained "${recipe[@]}" --manualSeed "$seed" $PRECISION_ARGS "$@"
    done
done
finish_matrix
