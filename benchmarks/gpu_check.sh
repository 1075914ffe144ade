#!/usr/bin/env bash
# GPU check: the correctness tests on CUDA, then a small timing. Under 5 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            (from the repository root, torch with CUDA installed)
# JAX runs too when its GPU backend is installed (jax[cuda12]); otherwise it is skipped, loudly.
# Writes the timing table to $OUT/gpu_layer_bench.csv when OUT is set.
set -euo pipefail
# JAX must not reserve most of the GPU up front (the benchmark reads its peak memory use).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script checks the GPU paths"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| tf32 matmul allowed:", torch.backends.cuda.matmul.allow_tf32)
PY
# Every torch test is parametrised over devices; select the CUDA instances.
python -m pytest -q -x tests/torch_impl -k cuda

impls=lsh,full-fused,full-naive
if python -c "import jax; print('jax', jax.__version__, '|', jax.devices('gpu'))" 2>/dev/null; then
    impls="$impls,jax-lsh,jax-full-fused"
    if [ -d tests/jax_impl ]; then
        # The JAX tests are parametrised over devices the same way ("cuda").
        # Exit code 5 means no test matched "cuda" yet: say so rather than fail.
        rc=0
        python -m pytest -q -x tests/jax_impl -k cuda || rc=$?
        if [ "$rc" -eq 5 ]; then
            echo "WARNING: no tests/jax_impl test matched -k cuda" >&2
        elif [ "$rc" -ne 0 ]; then
            exit "$rc"
        fi
    fi
else
    echo "WARNING: JAX has no GPU backend here: JAX tests and timings skipped" >&2
fi
python -m attnbench.layer_bench --device cuda --impls "$impls" \
    --lengths 4096,16384 --n-hashes 1,4 --n-buckets auto --repeats 10 --timeout 120 \
    ${OUT:+--csv "$OUT/gpu_layer_bench.csv"}
echo "gpu_check.sh: ${SECONDS}s"
