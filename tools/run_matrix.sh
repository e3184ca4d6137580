# Shared by train_CIFAR10.sh and train_ImageNet.sh (sourced, not run): one training run
# per call, with a dry-run mode, skipping of finished runs and resuming of partial ones.
#   DRY_RUN=1    print the commands instead of running them
#   FORCE=1      rerun finished runs (a finished run has results.json in its folder)
# A run that fails is reported and the matrix goes on (finish_matrix exits 1 if any did); a
# run main.py refuses (exit 2: missing data, a bad flag, a folder another run is writing to)
# stops the matrix at once with exit 2, since the same refusal would meet every later run. A
# run stopped by SIGINT or SIGTERM (exit 130 / 143, its checkpoint saved) stops the matrix too,
# with the run's exit status: the same command resumes it.

FAILED_RUNS=()

# matrix_python: the Python the runs use: $PYTHON when set, else the repository's .venv
# (README's quick start creates it) when it exists, else python on the PATH.
matrix_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -x .venv/bin/python ]; then
        echo .venv/bin/python
    else
        echo python
    fi
}

# precision_args LAUNCHER: main.py's precision flags for PRECISION (auto: bf16 where this
# machine computes it natively, else fp32, as `python -m tools.precision` prints; bf16:
# --amp --channels_last; fp32: --no-amp --channels_last, explicit so that a partial bf16
# run resumed by the matrix switches). NHWC is on in both: it was faster on both CPU kinds
# measured (docs/results.md); a --no-channels_last after them turns it off.
# LAUNCHER is the runs' Python or launcher (torchrun).
precision_args() {
    local precision=${PRECISION:-auto} detector launcher
    if [ "$precision" = auto ]; then
        read -ra launcher <<< "$1"
        case ${launcher[0]} in
            *python*) detector=${launcher[0]} ;;
            *) detector=$(PYTHON="" matrix_python) ;;  # a launcher such as torchrun: ask the Python it would run
        esac
        precision=$("$detector" -m tools.precision) || return 2
        echo "== PRECISION=auto: $precision on this machine" >&2
    fi
    case $precision in
        bf16) echo "--amp --channels_last" ;;
        fp32) echo "--no-amp --channels_last" ;;
        *) echo "error: unknown PRECISION '$precision' (auto bf16 fp32)" >&2; return 2 ;;
    esac
}

# run_one SAVE_DIR MAIN_PY_ARGS...
run_one() {
    local save_dir=$1
    shift
    local launcher
    read -ra launcher <<< "$PYTHON"  # PYTHON may be a launcher with arguments, e.g. torchrun
    local command=("${launcher[@]}" main.py --save_path "$save_dir" "$@")
    if [ "${FORCE:-0}" != 1 ] && grep -qs '"status": "complete"' "$save_dir/results.json"; then
        echo "== skip (finished): $save_dir"
        return 0
    fi
    if [ "${FORCE:-0}" != 1 ] && [ -f "$save_dir/checkpoint.pth.tar" ]; then
        command+=(--resume "$save_dir/checkpoint.pth.tar")
    fi
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '%q ' "${command[@]}"
        echo
        return 0
    fi
    echo "== run: ${command[*]}"
    "${command[@]}"
    local status=$?
    if [ "$status" = 2 ]; then
        echo "== stopped: main.py refused $save_dir (the error above); no later run was started" >&2
        exit 2
    elif [ "$status" = 130 ] || [ "$status" = 143 ]; then
        echo "== stopped: $save_dir was interrupted; the same command resumes it, no later run was started" >&2
        exit "$status"
    elif [ "$status" != 0 ]; then
        FAILED_RUNS+=("$save_dir")
    fi
}

finish_matrix() {
    if [ ${#FAILED_RUNS[@]} -gt 0 ]; then
        echo "== ${#FAILED_RUNS[@]} run(s) failed: ${FAILED_RUNS[*]}" >&2
        exit 1
    fi
}

# seed_list COUNT FIRST: COUNT seeds starting at FIRST
seed_list() {
    seq "$2" $(($2 + $1 - 1))
}
