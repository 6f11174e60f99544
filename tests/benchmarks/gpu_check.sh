#!/usr/bin/env bash
# One-call GPU check (`make gpu-check`) for a CUDA machine with python3, torch and triton already
# installed and no network:
#   0. install: nlopt from .whl/ when that folder exists, then this package (builds retrain._C);
#   a. the cross-backend tests and the Triton kernel tests on CUDA;
#   b. tests/benchmarks/gpu_bench.py: Triton vs eager vs batched, with the roofline;
#   c. tests/benchmarks/gpu_tune.py when present (tuner wall time), with OUT set to a scratch folder;
#   d. `python3 -m retrain demo --quiet` when retrain/cli.py exists, timed.
# Every step runs under `timeout`; a failed step is recorded and the script goes on.  $OUT
# (default runs/gpu_check) receives few files: gpu_check.log (everything), summary.txt,
# gpu_bench.json, gpu_bench_table.md, tune.tar.gz, demo_run.tar.gz.  The step summary and the
# benchmark table are printed last.  Expected: about 5-6 minutes on an H100/H200; the limits
# below add up to 460 s plus a few seconds: with a machine start the check fits 10 minutes of device time.
set -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
SCRATCH="$(mktemp -d /tmp/gpu_check.XXXXXX)"
PY=python3
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
: > "$LOG"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$LOG" >> "$SUMMARY"; }

step() {  # step NAME SECONDS COMMAND...: run under timeout, append to the log, record status and time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=$?
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=TIMEOUT; elif [ "$rc" -ne 0 ]; then status="FAILED (rc $rc)"; fi
    note "$name: $status in $((SECONDS - t0)) s"
}

{
    echo "$(date -u +%FT%TZ) $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| triton', triton.__version__, '| cuda', torch.version.cuda)"
} 2>&1 | tee -a "$LOG" >> "$SUMMARY"

install() {
    if compgen -G ".whl/*.whl" > /dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
    fi
    # Fallback without pip: build in place and map kernels/ to retrain.kernels as setup.py does.
    $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . \
        || { $PY setup.py build_ext --inplace && ln -sfn ../kernels retrain/kernels; }
}
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export -f install
export PY
step install 60 bash -c install
$PY -c "from retrain.backends import available_backends; print('backends:', available_backends())" 2>&1 \
    | tee -a "$LOG" >> "$SUMMARY"

XDIST=""
if $PY -c "import xdist" 2> /dev/null; then XDIST="-n 4"; fi
step tests 90 $PY -m pytest -x -q $XDIST -p no:cacheprovider tests/test_backend_parity.py tests/test_triton_kernels.py

step bench 190 $PY tests/benchmarks/gpu_bench.py --out "$OUT" --budget 160

if [ -f tests/benchmarks/gpu_tune.py ]; then
    OUT="$SCRATCH/tune" step tune 60 $PY tests/benchmarks/gpu_tune.py
    tar -czf "$OUT/tune.tar.gz" -C "$SCRATCH" tune 2> /dev/null
else
    note "tune: skipped (tests/benchmarks/gpu_tune.py absent)"
fi

if [ -f retrain/cli.py ]; then
    step demo 60 $PY -m retrain demo --quiet --out "$SCRATCH/demo_run"
    tar -czf "$OUT/demo_run.tar.gz" -C "$SCRATCH" demo_run 2> /dev/null
else
    note "demo: skipped (retrain/cli.py absent)"
fi

echo
echo "=== summary"
cat "$SUMMARY"
if [ -f "$OUT/gpu_bench_table.md" ]; then
    echo
    cat "$OUT/gpu_bench_table.md"
fi
