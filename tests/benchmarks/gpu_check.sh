#!/usr/bin/env bash
# The one-call GPU check (`make gpu-check`), for a CUDA machine that has python3, torch, triton,
# numpy, pytest, pytest-benchmark, safetensors and pybind11, and no network:
#   build    the C++ extension in place (setup.py, or g++ straight when setuptools is missing) and
#            retrain.kernels importable from this checkout;
#   wheels   cp312 wheels from a git-ignored .whl/ folder, when there is one, unpacked into a
#            scratch site folder (nlopt for the tuner; nlopt, tqdm, matplotlib and its
#            dependencies for the demo); a failed install skips only the steps that need them;
#   compile  sm_90 registers / spills / shared memory of the kernels as their launchers launch them;
#   tests    the cross-backend parity suite and the Triton kernel tests, on CUDA;
#   bench    tests/benchmarks/gpu_bench.py: Triton vs eager, batched and user-parallel PyTorch, roofline;
#   variants gpu_bench.py --variants: the training kernel's variants (FMA products, persistent grid,
#            bias folded, tf32x3, probe blocks) side by side per shape, the fastest named;
#   tune     tests/benchmarks/gpu_tune.py (needs nlopt); demo: `python3 -m retrain demo --quiet`.
# Every step runs under `timeout` and writes its results to $OUT as it goes (a step killed by its
# limit keeps what it finished); a failed step is recorded and the check goes on.  The summary and
# the tables are printed last.  Step limits add up to 310 s (expected: about 4 minutes); with the
# machine start the check fits 6 minutes of device time.
#
#   OUT=DIR bash tests/benchmarks/gpu_check.sh     # default OUT=runs/gpu_check
#   bash tests/benchmarks/gpu_check.sh --fetch-wheels   # on a machine with network: fill .whl/
# .whl/ is git-ignored: bring it along with the checkout (the device tool's carry: [".whl"], 25 MB).
# RETRAIN_GPU_CHECK_SMOKE=1 rehearses every step on the CPU (TRITON_INTERPRET=1, tiny sizes).
set -o pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
WHEELS="nlopt tqdm matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six packaging"

if [ "${1:-}" = "--fetch-wheels" ]; then
    exec $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d .whl $WHEELS
fi

OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
SCRATCH="$(mktemp -d /tmp/gpu_check.XXXXXX)"
SITE="$SCRATCH/site"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=1  # the kernels set fusion per launch; this silences triton 3.9's notice
if [ "${RETRAIN_GPU_CHECK_SMOKE:-0}" = 1 ]; then
    export TRITON_INTERPRET=1
    BENCH_ARGS="--smoke"
    VARIANT_ARGS="--smoke --reps 1"
    TESTS="tests/test_triton_kernels.py"
    TUNE_ARGS="--smoke"
    DEMO_ARGS="--users 60 --max-evals 2 --backend cpu"  # the demo under the interpreter takes many minutes
    DEMO_LIMIT=120
else
    unset TRITON_INTERPRET
    BENCH_ARGS="--budget 58"
    VARIANT_ARGS="--budget 45"
    TESTS="tests/test_backend_parity.py tests/test_triton_kernels.py -k triton"  # the triton cases only
    TUNE_ARGS="--budget 12"
    DEMO_ARGS="--backend triton"
    DEMO_LIMIT=25
fi
: > "$LOG"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$LOG" >> "$SUMMARY"; }

step() {  # step NAME SECONDS COMMAND...: run under timeout, log, record status and time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG" | tee "$OUT/$name.txt"
    local rc=$?
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED (rc $rc)"; fi
    note "$name: $status in $((SECONDS - t0)) s"
}

has() { $PY -c "import $1" 2> /dev/null; }

{
    echo "$(date -u +%FT%TZ) $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
    $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| triton', triton.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())"
} 2>&1 | tee -a "$LOG" >> "$SUMMARY"

build() {  # the extension in place, then retrain.kernels from kernels/ as setup.py maps it
    if has setuptools; then
        $PY setup.py -q build_ext --inplace || return 1
    else
        local suffix
        suffix="$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
        g++ -O3 -march=x86-64-v2 -fno-fast-math -fopenmp -shared -fPIC -std=c++17 \
            $($PY -m pybind11 --includes) csrc/*.cpp -o "retrain/_C$suffix" || return 1
    fi
    $PY -c "import retrain.kernels" 2> /dev/null || ln -sfn ../kernels retrain/kernels
    $PY -c "import retrain.kernels, retrain._C; print('retrain.kernels and retrain._C import')"
}

wheels() {  # unpack every .whl/*.whl into $SITE: one pip call for all (each pip start costs ~1 s), else zipfile
    mkdir -p "$SITE"
    if $PY -m pip --version > /dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
        return
    fi
    local w ok=0
    for w in .whl/*.whl; do
        $PY -m zipfile -e "$w" "$SITE" || ok=1
    done
    return $ok
}

export -f build wheels has
export PY SITE
step build 40 bash -c build
if compgen -G ".whl/*.whl" > /dev/null; then
    step wheels 10 bash -c wheels
else
    note "wheels: skipped (no .whl/ folder: bash tests/benchmarks/gpu_check.sh --fetch-wheels on a machine with network)"
fi
$PY -c "from retrain.backends import available_backends; print('backends:', available_backends())" 2>&1 \
    | tee -a "$LOG" >> "$SUMMARY"

step compile 20 $PY tests/benchmarks/gpu_bench.py --compile-report --out "$OUT"
step tests 75 $PY -m pytest -q -rfE -p no:cacheprovider $TESTS
step bench 70 $PY tests/benchmarks/gpu_bench.py $BENCH_ARGS --out "$OUT"
step variants 55 $PY tests/benchmarks/gpu_bench.py --variants $VARIANT_ARGS --out "$OUT"

if has nlopt; then
    mkdir -p "$OUT/tune"
    OUT="$OUT/tune" step tune 15 $PY tests/benchmarks/gpu_tune.py $TUNE_ARGS
else
    note "tune: skipped (nlopt is not installed and no nlopt wheel in .whl/)"
fi

MISSING="$(for m in nlopt tqdm matplotlib; do has $m || printf '%s ' $m; done)"
if [ -z "$MISSING" ]; then
    step demo $DEMO_LIMIT $PY -m retrain demo --quiet $DEMO_ARGS --out "$OUT/demo_run"
else
    note "demo: skipped (not installed and no wheel in .whl/: $MISSING)"
fi

echo
echo "=== summary"
cat "$SUMMARY"
for f in compile_report.md gpu_bench_table.md gpu_variants_table.md; do
    if [ -f "$OUT/$f" ]; then echo; cat "$OUT/$f"; fi
done
