#!/usr/bin/env bash
# The GPU checks of FaceSplat, in one go, on a machine with an NVIDIA GPU (not a test; CI has no GPU).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default runs/gpu_check)
#
# 1. installs wheels from ./.whl/ if that folder holds any (a machine with no registry: gsplat,
#    pycolmap, ... fetched beforehand, see below), into a private folder put on PYTHONPATH;
# 2. JIT-builds gsplat's CUDA code for this GPU only (minutes on first use; cached afterwards);
# 3. runs the gsplat tests of tests/backend/test_render.py (parity of our CPU renderer with gsplat);
# 4. runs the sample capture at the defaults (40 frames, 540 px, 3000 steps, --device cuda) through
#    benchmarks/bench_pipeline.py, which prints per-stage time and held-out PSNR; this script
#    samples nvidia-smi meanwhile for the peak GPU memory.
# Ends with a summary; the exit code is 0 only when every step passed.
#
# Preparing .whl/ for a Python 3.12 x86-64 machine without gsplat and pycolmap (on a machine with PyPI):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl gsplat==1.5.3 pycolmap==4.2.1
# (gsplat's own needs, ninja, jaxtyping and rich, are usually there already; add them if not, and
# opencv-python-headless==4.14.0.94 if the machine's OpenCV is 5.x, which has no Haar detector.)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT_DIR=${1:-runs/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
declare -a SUMMARY=()
FAILED=0

say() { echo "== $*" | tee -a "$LOG"; }
record() {  # record NAME STATUS [DETAIL]
    SUMMARY+=("$(printf '%-18s %-6s %s' "$1" "$2" "${3:-}")")
    if [ "$2" != "ok" ] && [ "$2" != "skip" ]; then FAILED=1; fi
}
elapsed() { echo $(( $(date +%s) - $1 )); }

# ---- 0. the machine ---------------------------------------------------------------------------
say "machine"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "nvidia-smi not found: this script needs an NVIDIA GPU"
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    say "PyTorch ($PY) does not see a CUDA GPU; nothing to check"
    exit 2
fi
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| capability', '.'.join(map(str, torch.cuda.get_device_capability())))" | tee -a "$LOG"

# ---- 1. packages ------------------------------------------------------------------------------
SITE=""
if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=${SITE_DIR:-/tmp/facesplat_site}
    say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl >>"$LOG" 2>&1; then
        record "wheels" ok "$(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    else
        record "wheels" FAIL "pip install from .whl/ failed (see $LOG)"
    fi
fi
export PYTHONPATH="$REPO/backend${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "cv2", "pycolmap", "numba", "sklearn", "tqdm", "gsplat", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
# opencv-python 5.x dropped the Haar face detector the masks stage uses (4.14.0.94 still has it).
if [[ " $missing " != *" cv2 "* ]] && ! "$PY" -c "import cv2, os; assert hasattr(cv2, 'CascadeClassifier') and os.path.exists(cv2.data.haarcascades + 'haarcascade_frontalface_default.xml')" 2>/dev/null; then
    missing="$missing cv2-with-Haar-cascades(carry opencv-python-headless<5)"
fi
if [ -n "$missing" ]; then
    say "missing Python packages: $missing"
    record "packages" FAIL "missing: $missing"
else
    record "packages" ok
fi

# ---- 2. gsplat's CUDA build -------------------------------------------------------------------
say "building gsplat's CUDA code (first use compiles for minutes)"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then  # this GPU's architecture only: a quarter of the build
    TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
start=$(date +%s)
if timeout "${GSPLAT_BUILD_TIMEOUT:-1200}" "$PY" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat built no CUDA module'" >>"$LOG" 2>&1; then
    record "gsplat build" ok "$(elapsed "$start") s (arch $TORCH_CUDA_ARCH_LIST)"
    GSPLAT_OK=1
else
    record "gsplat build" FAIL "after $(elapsed "$start") s (see $LOG)"
    GSPLAT_OK=0
fi

# ---- 3. parity tests --------------------------------------------------------------------------
if [ "$GSPLAT_OK" = 1 ]; then
    say "gsplat tests in tests/backend/test_render.py"
    start=$(date +%s)
    if timeout 900 "$PY" -m pytest -q -rs -p no:cacheprovider tests/backend/test_render.py -k "gsplat" 2>&1 | tee -a "$LOG" | tail -15; then
        record "parity tests" ok "$(elapsed "$start") s"
    else
        record "parity tests" FAIL "see $LOG"
    fi
    # A test skipped here (no gsplat, no CUDA) would hide a failure: say so.
    if grep -q "SKIPPED" "$LOG"; then record "parity skips" WARN "some gsplat tests were skipped (see $LOG)"; fi
else
    record "parity tests" skip "gsplat did not build"
fi

# ---- 4. the sample capture at the defaults ----------------------------------------------------
say "sample capture at the defaults on the GPU (bench_pipeline.py)"
MEM_LOG="$OUT_DIR/gpu_memory.csv"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$MEM_LOG" 2>/dev/null &
SAMPLER=$!
baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
start=$(date +%s)
if timeout "${RUN_TIMEOUT:-1500}" "$PY" benchmarks/bench_pipeline.py --capture samples/lps_orbit160 \
        --num-frames 40 --height 540 --num-iters 3000 --device cuda \
        --workspace "$OUT_DIR/bench" --picture "$OUT_DIR/held_out.png" 2>"$OUT_DIR/pipeline_stderr.log" | tee "$OUT_DIR/bench.txt" | tee -a "$LOG"; then
    run_ok=1
else
    run_ok=0
fi
wall=$(elapsed "$start")
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
peak=$(sort -n "$MEM_LOG" 2>/dev/null | tail -1)
gpu_mem="peak ${peak:-?} MiB used on the GPU (${baseline:-?} MiB before the run)"
if [ "$run_ok" = 1 ]; then
    psnr=$(grep -o "held out [0-9.]* dB" "$OUT_DIR/bench.txt" | head -1)
    renderer=$(grep -o "renderer [a-z]*" "$OUT_DIR/bench.txt" | head -1)
    record "sample capture" ok "$wall s wall, ${psnr:-held-out PSNR not found}, ${renderer:-renderer ?}, $gpu_mem"
    if [ "${renderer:-}" != "renderer gsplat" ]; then record "renderer" WARN "the run did not use gsplat: ${renderer:-?}"; fi
else
    record "sample capture" FAIL "after $wall s; last lines of the pipeline's stderr:"
    tail -5 "$OUT_DIR/pipeline_stderr.log" | tee -a "$LOG"
fi

# ---- summary ----------------------------------------------------------------------------------
say "summary (log: $LOG)"
for line in "${SUMMARY[@]}"; do echo "  $line" | tee -a "$LOG"; done
exit "$FAILED"
