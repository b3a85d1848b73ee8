#!/usr/bin/env bash
# End-to-end check of the CUDA targets on a Linux machine with an NVIDIA GPU, from a fresh checkout:
#   1. a virtual environment that sees the machine's CUDA build of torch (--system-site-packages),
#      with rwkv-edge installed editable (online: pip -c constraints.txt; offline: a wheelhouse);
#   2. libcudart.so.13 findable (TVM's CUDA runtime links it), the GPU's arch and CUDA target;
#   3. per model (the demo model, the 0.1B shape): export onnx, compile for the GPU with fp32 and
#      with fp16 weights, verify both against PyTorch on the GPU;
#   4. python scripts/bench.py --device cuda over the bench models and weights.
#
#   bash scripts/gpu-check.sh [--skip-verify] [--skip-bench] [--models demo,0.1b] [--bench-models 0.1b,1.5b]
#                             [--weights fp32,fp16] [--target cuda-sm90] [--json-dir DIR] [--out DIR]
#
# Environment (a flag wins): PYTHON (python3), OUT_DIR (out/gpu-check), GPU_CHECK_MODELS,
# GPU_CHECK_BENCH_MODELS, GPU_CHECK_WEIGHTS, GPU_CHECK_TARGET, GPU_CHECK_JSON_DIR ($OUT_DIR),
# GPU_CHECK_SKIP_VERIFY=1, GPU_CHECK_SKIP_BENCH=1, GPU_CHECK_VENV ($OUT_DIR/venv);
# RWKV_EDGE_WHEELHOUSE=DIR: install offline from DIR (apache-tvm, apache-tvm-ffi, pyrwkv-tokenizer,
# setuptools; every other requirement must already be installed), with RWKV_EDGE_WHEEL_PARTS=DIR[:DIR] first
# rejoining split wheels into it (scripts/gpu-wheelhouse.sh assemble; .gpu/README).
# Exit status: 0 when everything passed; 1 with one line saying what is missing or failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-out/gpu-check}
MODELS=${GPU_CHECK_MODELS:-demo,0.1b}
BENCH_MODELS=${GPU_CHECK_BENCH_MODELS:-0.1b,1.5b}
WEIGHTS=${GPU_CHECK_WEIGHTS:-fp32,fp16}
TARGET=${GPU_CHECK_TARGET:-}
JSON_DIR=${GPU_CHECK_JSON_DIR:-}
SKIP_VERIFY=${GPU_CHECK_SKIP_VERIFY:-0}
SKIP_BENCH=${GPU_CHECK_SKIP_BENCH:-0}
VENV=${GPU_CHECK_VENV:-}
WHEELHOUSE=${RWKV_EDGE_WHEELHOUSE:-}
PARTS=${RWKV_EDGE_WHEEL_PARTS:-}

START=$SECONDS
log() { printf '[gpu-check %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'gpu-check: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --skip-verify) SKIP_VERIFY=1 ;;
        --skip-bench) SKIP_BENCH=1 ;;
        --models) MODELS=${2:?--models needs a list}; shift ;;
        --bench-models) BENCH_MODELS=${2:?--bench-models needs a list}; shift ;;
        --weights) WEIGHTS=${2:?--weights needs a list}; shift ;;
        --target) TARGET=${2:?--target needs a name}; shift ;;
        --json-dir) JSON_DIR=${2:?--json-dir needs a folder}; shift ;;
        --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
        -h | --help) usage ;;
        *) printf 'gpu-check: error: unknown argument %s\n' "$1" >&2; usage 2 >&2 ;;
    esac
    shift
done
VENV=${VENV:-$OUT_DIR/venv}
JSON_DIR=${JSON_DIR:-$OUT_DIR}
WORK="$OUT_DIR/work"  # checkpoints, exports and bundles, shared with scripts/bench.py's --work

# -- the machine: a GPU, its driver, nvcc ------------------------------------------------------------
[ "$(uname -s)" = Linux ] || die "this check runs on Linux (found $(uname -s))"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi -L 2> /dev/null | grep -q '^GPU ' || die "nvidia-smi lists no GPU: no NVIDIA GPU (or no driver) on this machine"
    log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
elif [ ! -e /dev/nvidiactl ]; then
    die "no NVIDIA GPU here (no nvidia-smi, no /dev/nvidiactl)"
fi
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
command -v nvcc > /dev/null || die "nvcc not found: CUDA targets compile with the CUDA 13 toolkit's nvcc (put its bin/ on PATH)"
log "nvcc: $(nvcc --version | grep -o 'release [0-9.]*' | head -n 1)"

# -- a venv that sees the machine's torch ------------------------------------------------------------
mkdir -p "$OUT_DIR" "$JSON_DIR" "$WORK"
command -v "$PYTHON" > /dev/null || die "no $PYTHON (set PYTHON to the interpreter that holds the CUDA build of torch)"
if [ ! -x "$VENV/bin/python" ]; then
    log "venv $VENV (--system-site-packages, from $PYTHON)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
# A venv made from inside another venv (python3 is often one) sees the base interpreter's packages,
# not that venv's: a .pth file adds the packages of $PYTHON itself.
"$VPY" - "$("$PYTHON" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"] + "\n" + p["platlib"])')" <<'EOF'
import site, sys, sysconfig
from pathlib import Path
here = Path(sysconfig.get_paths()["purelib"])
extra = [p for p in dict.fromkeys(sys.argv[1].splitlines()) if p and Path(p) != here]
(here / "_gpu_check_parent.pth").write_text("".join(p + "\n" for p in extra))
EOF
"$VPY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null \
    || die "torch in $VENV cannot use the GPU: $PYTHON needs a CUDA build of torch installed ($("$VPY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -n 1))"
log "torch: $("$VPY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))')"

# -- rwkv-edge -------------------------------------------------------------------------------------
# The requirements of pyproject.toml but torch (the machine's stays) and coremltools (Core ML
# targets only; imported where used); pinned as in pyproject.
mapfile -t REQS < <("$VPY" - <<'EOF'
import re, tomllib
for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if re.split(r"[<>=!~ ;\[]", req)[0].lower() not in ("torch", "coremltools"):
        print(req)
EOF
)
if [ -n "$WHEELHOUSE" ]; then
    if [ -n "$PARTS" ]; then
        IFS=: read -r -a PART_DIRS <<< "$PARTS"
        bash scripts/gpu-wheelhouse.sh assemble "$WHEELHOUSE" "${PART_DIRS[@]}"
    fi
    [ -d "$WHEELHOUSE" ] || die "RWKV_EDGE_WHEELHOUSE=$WHEELHOUSE is not a folder"
    log "install offline from $WHEELHOUSE: ${REQS[*]}"
    "$VPY" -m pip install -q --no-index --find-links "$WHEELHOUSE" --no-deps "${REQS[@]}" \
        || die "offline install failed: every requirement above must be installed already or have a wheel in $WHEELHOUSE"
    # pyproject's SPDX license string needs setuptools >= 77; the wheelhouse has one where the machine's is older
    "$VPY" -m pip install -q --no-index --find-links "$WHEELHOUSE" --no-deps "setuptools>=77" \
        || die "setuptools >= 77 is neither installed nor in $WHEELHOUSE (the editable install needs it)"
    "$VPY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || die "pip install -e . failed (offline)"
else
    log "install (pip -c constraints.txt, keeping the machine's torch)"
    grep -v -i '^torch==' constraints.txt > "$OUT_DIR/constraints-without-torch.txt"
    "$VPY" -m pip install -q -c "$OUT_DIR/constraints-without-torch.txt" "${REQS[@]}" coremltools
    "$VPY" -m pip install -q --no-deps -e .
fi
RWKV="$VENV/bin/rwkv-edge"
"$VPY" -c 'import tvm, rwkv_edge; print("apache-tvm", tvm.__version__)' > /dev/null || die "rwkv_edge or tvm does not import in $VENV"

# -- libcudart.so.13 for TVM's CUDA runtime ---------------------------------------------------------
if ! ldconfig -p 2> /dev/null | grep -q 'libcudart\.so\.13 '; then
    CUDART=$("$VPY" - <<'EOF'
import glob, os, sys
places = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/cuda/targets/sbsa-linux/lib",
          *(os.path.join(p, "nvidia") for p in sys.path if p)]  # the nvidia-cuda-runtime wheel: nvidia/*/lib
for place in places:
    found = glob.glob(os.path.join(place, "libcudart.so.13*")) + glob.glob(os.path.join(place, "**", "libcudart.so.13*"), recursive=True)
    if found:
        print(os.path.dirname(sorted(found)[0]))
        break
EOF
)
    [ -n "$CUDART" ] || die "libcudart.so.13 not found (CUDA 13 runtime: /usr/local/cuda/lib64 or the nvidia-cuda-runtime package)"
    export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "libcudart.so.13: $CUDART (LD_LIBRARY_PATH)"
fi
ARCH=$("$VPY" -c 'from rwkv_edge.platforms import cuda_device_arch; print(cuda_device_arch() or "")')
[ -n "$ARCH" ] || die "TVM's CUDA runtime sees no GPU (libcudart.so.13 or the driver's libcuda.so.1 does not load)"
TARGET=${TARGET:-$("$VPY" -c "from rwkv_edge.bench.run import default_cuda_target; print(default_cuda_target('$ARCH'))")}
log "GPU arch $ARCH -> target $TARGET"
log "plan: verify [${MODELS}] (skip: $SKIP_VERIFY), bench [${BENCH_MODELS}] x [${WEIGHTS}] (skip: $SKIP_BENCH); out $OUT_DIR, JSON $JSON_DIR"

step() {  # step WHAT COMMAND...: run it, its output into the log; one line and exit 1 if it fails
    local what=$1 code=0
    shift
    log "$what"
    "$@" || code=$?
    [ "$code" -ne 3 ] || die "$what: exit 3, the bundle was built but not run (verify found no GPU to run it on)"
    [ "$code" -eq 0 ] || die "$what failed (exit $code)"
}

verify() {  # verify MODEL WEIGHTS BUNDLE: its parity.json lands in JSON_DIR, passed or not
    local code=0
    "$RWKV" verify "$3" || code=$?
    if [ -f "$3/parity.json" ]; then cp "$3/parity.json" "$JSON_DIR/verify-$1-$TARGET-$2.json"; fi
    return "$code"
}

checkpoint() {  # the checkpoint of a model name
    case "$1" in
        demo) "$VPY" -c 'from rwkv_edge.model import DEMO_CHECKPOINT; print(DEMO_CHECKPOINT)' ;;
        0.1b | 1.5b)
            "$VPY" scripts/bench.py "--make-$1" "$WORK/rwkv7-$1-shape-random.pth" >&2
            echo "$WORK/rwkv7-$1-shape-random.pth" ;;
        *) die "unknown model $1; choose demo, 0.1b, 1.5b" ;;
    esac
}

# -- compile and verify ----------------------------------------------------------------------------
if [ "$SKIP_VERIFY" != 1 ]; then
    IFS=, read -r -a MODEL_LIST <<< "$MODELS"
    for model in "${MODEL_LIST[@]}"; do
        ckpt=$(checkpoint "$model")
        dir="$OUT_DIR/$model"
        step "$model: export onnx (decode step)" "$RWKV" export onnx "$ckpt" --prefill-chunk 0 -o "$dir/onnx"
        for w in fp32 fp16; do
            step "$model: compile $TARGET --weights $w" "$RWKV" compile "$dir/onnx" --target "$TARGET" --weights "$w" -o "$dir/tvm-$TARGET-$w"
            step "$model: verify $TARGET $w weights on the GPU" verify "$model" "$w" "$dir/tvm-$TARGET-$w"
        done
    done
fi

# -- bench -----------------------------------------------------------------------------------------
if [ "$SKIP_BENCH" != 1 ]; then
    step "bench $BENCH_MODELS, weights $WEIGHTS" env PYTHONUNBUFFERED=1 "$VPY" scripts/bench.py --device cuda \
        --models "$BENCH_MODELS" --weights "$WEIGHTS" --target "$TARGET" --work "$WORK" --json-dir "$JSON_DIR"
fi
log "done: every step passed; reports in $JSON_DIR"
