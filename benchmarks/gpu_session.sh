#!/usr/bin/env bash
# Everything to do on a lent GPU machine, in one call (device time is scarce): what the machine
# has, benchmarks/gpu_check.py (every kernel checked against the cpu device and timed; the
# GEMM against cuBLAS; FCN-8s at 500x500), the CUDA tests on the real GPU, and the CLI on
# cuda. Logs and gpu.json go to $OUT (default ./gpu_out). Each stage has its own time limit,
# so one that hangs cannot eat the others' time. Run from the repository root:
#     bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=${NUMBA_ENABLE_CUDASIM:-0} PYTHONUNBUFFERED=1
# Without `pip install`, give Python the layout pip's package_dir makes (kernels/ ->
# minifcn.kernels, its cpu/ and cuda/ packages with it), and the repository on the path
# (scripts in benchmarks/ import minifcn).
$PY -c "import minifcn.kernels" 2>/dev/null || ln -sfn ../kernels minifcn/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Wheels carried in .whl/ (the machine has no network) go first on the path. Seen needed: an
# image with numba 0.68.0 beside numpy 2.5, which numba's CPU target cannot import
# ("module 'numpy' has no attribute 'row_stack'"); a numpy 2.4 wheel fixes it.
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo "cpus $(nproc)"
    $PY -c "import sys, numpy, numba; print('python', sys.version.split()[0], '| numpy', \
numpy.__version__, '| numba', numba.__version__)"
    $PY -m pip list 2>/dev/null | grep -i -E "^(numba|numba-cuda|cupy|torch|llvmlite) "
    $PY -c "import numba; print('numba cpu target works:', numba.njit(lambda: 1)() == 1)"
} 2>&1 | tee "$OUT/env.txt"

echo "== gpu_check"
timeout "${GPU_CHECK_S:-300}" $PY benchmarks/gpu_check.py --out "$OUT/gpu.json" 2>&1 \
    | tee "$OUT/gpu_check.log"
echo "gpu_check exit ${PIPESTATUS[0]}"

echo "== CUDA tests on the GPU"
timeout "${TESTS_S:-150}" $PY -m pytest -q -p no:cacheprovider -W ignore \
    tests/test_cuda_kernels.py tests/test_cuda_net.py > "$OUT/pytest_cuda.log" 2>&1
echo "pytest exit $?"
tail -n 25 "$OUT/pytest_cuda.log"

echo "== minifcn on cuda"
timeout "${CLI_S:-60}" $PY -m minifcn.cli bench --quick --device cuda --no-torch \
    --sections convs pools deconvs loss > "$OUT/cli.log" 2>&1
echo "bench --quick exit $?"
timeout "${CLI_S:-60}" $PY -m minifcn.cli train --device cuda --model fcn8s_tiny \
    --data synthetic --synthetic-size 8 --iters 20 --crop 64 64 --val-split "" \
    --out "$OUT/run" --no-progress >> "$OUT/cli.log" 2>&1
echo "train exit $?"
tail -n 5 "$OUT/cli.log"
rm -rf "$OUT/run"
