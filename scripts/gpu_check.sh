#!/usr/bin/env bash
# The one GPU check of issue #12, in one go (<= 8 minutes on one GPU):
#   1. install the wheel folder's packages (DeepSpeed, transformers, ...) beside the machine's own
#      torch, offline and with --no-deps, into a separate folder put first on PYTHONPATH: nothing of
#      the machine's environment is replaced, torch least of all;
#   2. the GPU tests and the kernel parity tests (on CUDA);
#   3. python engine/benchmark.py kernels          -> $OUT_DIR/kernels.json
#   4. python engine/benchmark.py train --gpu-mfu  -> $OUT_DIR/train_mfu.json (eager, compiled,
#      fused, fused + compiled);
#   5. the reproduction study at its GPU size (issue #16, about 8 minutes)
#      -> $OUT_DIR/reproduction_gpu/study.json and $OUT_DIR/reproduction_gpu.md.
# GPU_PARTS (default kernels,study) picks steps 2-4 (kernels) and/or 5 (study): a device command is
# limited to 10 minutes, so on a lent GPU run `GPU_PARTS=kernels` and `GPU_PARTS=study` as two calls.
# The study needs ../shared/data (corpus, vocabularies, NER) beside the checkout.
#
#   make wheels                    # beforehand, on a machine with network: fills wheels/
#   make gpu-check                 # on the GPU machine (no network needed)
#   make gpu-check GPU_DRY_RUN=1   # the same steps on CPU with tiny shapes (Triton's interpreter):
#                                  # checks the wheel set installs for Python 3.12 and every step runs
#
# Environment: PY (python with torch; default python3), WHEELS (default wheels), OUT_DIR (default
# bench, or runs/gpu-check-dry for a dry run), GPU_DRY_RUN (0/1), GPU_PARTS (kernels,study).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=${WHEELS:-wheels}
DRY=${GPU_DRY_RUN:-0}
PARTS=${GPU_PARTS:-kernels,study}
if [ "$DRY" = 1 ]; then OUT_DIR=${OUT_DIR:-runs/gpu-check-dry}; else OUT_DIR=${OUT_DIR:-bench}; fi
SITE=runs/gpu-check-site
step() { echo; echo "== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"; }

step "1/5 wheels from $WHEELS/ (offline, --no-deps, into $SITE)"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "error: no wheels in $WHEELS/ (run 'make wheels' on a machine with network first)" >&2; exit 1
fi
for w in "${wheels[@]}"; do
    case "$(basename "$w")" in
        torch-*|triton-*|nvidia_cu*|nvidia_nccl*) echo "error: $w: the check never installs torch, triton or CUDA libraries" >&2; exit 1;;
    esac
done
rm -rf "$SITE"
mkdir -p "$(dirname "$SITE")"
if [ "$DRY" = 1 ]; then
    # this interpreter is not the GPU machine's Python 3.12: install the set as for 3.12 (proves it is
    # complete and installable there) and run the steps below with the local environment
    "$PY" -m pip install -q --no-index --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --target "$SITE" "${wheels[@]}"
else
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$PWD/$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "installed ${#wheels[@]} wheels"
"$PY" - <<'PYEOF'
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
import deepspeed, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}, triton {triton_version}, deepspeed {deepspeed.__version__}, "
      f"transformers {transformers.__version__}, gpu {gpu}")
PYEOF

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    tests_marker="not slow"
    kernels_args=(--tiny)
    mfu_args=(--tiny --gpu-micro 2 --seq-len 32 --steps 1 --warmup 1)
    "$PY" -c "from engine.corpus.demo import write_demo_corpus; write_demo_corpus('runs/gpu-check-dry/corpus', num_docs=220)"
    study_args=(--size tiny --device cpu --corpus runs/gpu-check-dry/corpus)
else
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "error: no CUDA device visible (use GPU_DRY_RUN=1 for the CPU dry run)" >&2; exit 1
    fi
    tests_marker=""
    kernels_args=()
    mfu_args=(--steps 20 --warmup 5)
    study_args=(--size gpu)
fi
mkdir -p "$OUT_DIR"

if [[ ",$PARTS," == *",kernels,"* ]]; then
    step "2/5 GPU tests and kernel parity tests"
    "$PY" -m pytest -q -rs ${tests_marker:+-m "$tests_marker"} tests/test_bert_gpu.py tests/test_kernels_*.py

    step "3/5 kernels benchmark -> $OUT_DIR/kernels.json"
    "$PY" engine/benchmark.py kernels "${kernels_args[@]}" --out "$OUT_DIR/kernels.json"

    step "4/5 trainer MFU (eager, compiled, fused, fused + compiled) -> $OUT_DIR/train_mfu.json"
    "$PY" engine/benchmark.py train --gpu-mfu "${mfu_args[@]}" --out "$OUT_DIR/train_mfu.json"
fi
if [[ ",$PARTS," == *",study,"* ]]; then
    step "5/5 reproduction study (${study_args[*]}) -> $OUT_DIR/reproduction_gpu.md"
    "$PY" engine/study.py "${study_args[@]}" --out "$OUT_DIR/reproduction_gpu" --work runs/study-gpu
fi

step "done in ${SECONDS}s"
