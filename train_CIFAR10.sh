#!/usr/bin/env bash
# The paper's CIFAR-10 table: ResNet-20/32/44/56, full precision and ternarized, trained
# from scratch with the paper's recipe (200 epochs, batch 128, SGD-Nesterov momentum 0.9,
# lr 0.1 x0.1 at 80, x0.1 at 120, x0.5 at 160, weight decay 3e-4), one run per
# arch x variant x seed, each in SAVE_ROOT/DATASET/VARIANT_ARCH_eEPOCHS_seedSEED.
#
#   bash train_CIFAR10.sh                                 # the whole table, seed 5000
#   ARCHS="resnet20 resnet32" SEEDS=3 bash train_CIFAR10.sh
#   VARIANTS="tern rel2 tern_auto" bash train_CIFAR10.sh --epochs 10   # extra args go to main.py
#   EPOCHS=40 bash train_CIFAR10.sh                       # the schedule compressed to 40 epochs
#   PRETRAINED=pretrained/cifar10/fp_resnet20_e200_seed5000.pth EPOCHS=40 ARCHS=resnet20 \
#       VARIANTS="tern ttq" bash train_CIFAR10.sh --learning_rate 0.01   # fine-tuned: VARIANT_ft_... folders
#   DRY_RUN=1 bash train_CIFAR10.sh                       # print the commands only
#   python -m tools.report save/cifar10                   # the table next to the paper's numbers
#
# Environment: ARCHS (resnet20 resnet32 resnet44 resnet56), VARIANTS (fp tern; also rel2,
# rel4, tern_auto, rel2_auto, tern_fflf, and the peer quantizers twn, twn_fflf, ttq,
# ttq_fflf, ttq_ff, absmean, brevitas: --quantizer NAME, _fflf with the first and last layer full
# precision, _ff with only the first conv (TTQ's code; brevitas needs requirements-peers.txt)),
# SEEDS (number of seeds, 1), FIRST_SEED (5000),
# EPOCHS (200; the lr steps stay at 40%/60%/80% of the epochs, as 80/120/160 of 200),
# PRECISION (auto: bf16 where this machine computes it natively, else fp32, as
# `python -m tools.precision` prints; bf16: --amp --channels_last, 1.9x fp32
# on CPUs with AVX-512 BF16 at no accuracy cost measured, see docs/results.md, and several times slower where
# bf16 is emulated; fp32: --no-amp --channels_last, which also switches a partial bf16 run
# to fp32 when the matrix resumes it; add --no-channels_last to the arguments for NCHW),
# DATASET (cifar10; cifar100, fashion_mnist, mnist, digits work too), DATA_PATH
# (./data/DATASET), SAVE_ROOT (./save), PYTHON (.venv/bin/python when the repository has a
# .venv, else python), PRETRAINED (full-precision weights to fine-tune from: --pretrained, and
# the run folders are VARIANT_ft_ARCH_...), DRY_RUN, FORCE (see tools/run_matrix.sh). The length is EPOCHS, not
# --epochs: it names the run folders and places the lr steps.
set -uo pipefail
cd "$(dirname "$0")"
source tools/run_matrix.sh
PYTHON=$(matrix_python)
ARCHS=${ARCHS:-resnet20 resnet32 resnet44 resnet56}
VARIANTS=${VARIANTS:-fp tern}
SEEDS=${SEEDS:-1}
FIRST_SEED=${FIRST_SEED:-5000}
DATASET=${DATASET:-cifar10}
DATA_PATH=${DATA_PATH:-./data/$DATASET}
SAVE_ROOT=${SAVE_ROOT:-./save}
EPOCHS=${EPOCHS:-200}
PRETRAINED=${PRETRAINED:-}
PRETRAINED_ARGS=() FOLDER_SUFFIX=""
if [ -n "$PRETRAINED" ]; then PRETRAINED_ARGS=(--pretrained "$PRETRAINED") FOLDER_SUFFIX="_ft"; fi
for arg in "$@"; do
    case $arg in
        --epochs|--epochs=*) echo "error: give the length as EPOCHS=N bash train_CIFAR10.sh (it names the run folders and places the lr steps at 40/60/80%), not --epochs" >&2; exit 2 ;;
    esac
done
PRECISION_ARGS=$(precision_args "$PYTHON") || exit 2
# lr steps at 40/60/80% of the epochs with factors 0.1 0.1 0.5; a step before epoch 1 (EPOCHS < 5) is dropped
SCHEDULE="" GAMMAS=""
for step in "$((EPOCHS * 2 / 5)) 0.1" "$((EPOCHS * 3 / 5)) 0.1" "$((EPOCHS * 4 / 5)) 0.5"; do
    read -r epoch gamma <<< "$step"
    if [ "$epoch" -ge 1 ]; then SCHEDULE+=" $epoch" GAMMAS+=" $gamma"; fi
done
SCHEDULE_ARGS=""
if [ -n "$SCHEDULE" ]; then SCHEDULE_ARGS="--schedule$SCHEDULE --gammas$GAMMAS"; fi

variant_args() {  # variant_args VARIANT ARCH: main.py's model flags
    case $1 in
        fp) echo "--arch $2" ;;
        tern) echo "--arch tern_$2" ;;
        tern_fflf) echo "--arch tern_$2 --first_last fp" ;;
        rel2) echo "--arch tern_$2 --tex 2" ;;
        rel4) echo "--arch tern_$2 --tex 4" ;;
        tern_auto) echo "--arch tern_$2 --tfactors auto" ;;
        rel2_auto) echo "--arch tern_$2 --tex 2 --tfactors auto" ;;
        twn|ttq|absmean|brevitas) echo "--arch tern_$2 --quantizer $1" ;;
        twn_fflf|ttq_fflf) echo "--arch tern_$2 --quantizer ${1%_fflf} --first_last fp" ;;
        ttq_ff) echo "--arch tern_$2 --quantizer ttq --first_last first_fp" ;;
        *) echo "unknown variant '$1' (fp tern tern_fflf rel2 rel4 tern_auto rel2_auto twn twn_fflf ttq ttq_fflf ttq_ff absmean brevitas)" >&2
           return 1 ;;
    esac
}

for arch in $ARCHS; do
    case $arch in
        resnet20|resnet32|resnet44|resnet56) ;;
        *) echo "unknown arch '$arch' (resnet20 resnet32 resnet44 resnet56)" >&2; exit 2 ;;
    esac
    for variant in $VARIANTS; do
        model_args=$(variant_args "$variant" "$arch") || exit 2
        for seed in $(seed_list "$SEEDS" "$FIRST_SEED"); do
            # shellcheck disable=SC2086  # model_args, SCHEDULE_ARGS and PRECISION_ARGS are lists of flags
            run_one "$SAVE_ROOT/$DATASET/${variant}${FOLDER_SUFFIX}_${arch}_e${EPOCHS}_seed$seed" \
                --dataset "$DATASET" --data_path "$DATA_PATH" $model_args "${PRETRAINED_ARGS[@]}" \
                --epochs "$EPOCHS" --optimizer SGD --learning_rate 0.1 --momentum 0.9 --decay 3e-4 --batch_size 128 \
                $SCHEDULE_ARGS --manualSeed "$seed" --print_freq 100 $PRECISION_ARGS "$@"
        done
    done
done
finish_matrix
