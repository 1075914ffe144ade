#!/usr/bin/env bash
# GPU check: the CUDA correctness tests, the smoke suite on the GPU, then a small timing.
#   bash benchmarks/gpu_check.sh        (repository root; torch with CUDA; jax[cuda12] for JAX)
# Runs go to ${OUT:-reports/runs}/smoke-cuda and .../quickstart-cuda (results.jsonl + CSV).
set -euo pipefail
# JAX must not reserve most of the GPU up front (the harness reads its peak memory use).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
out=${OUT:-reports/runs}
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script checks the GPU paths"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| tf32 matmul allowed:", torch.backends.cuda.matmul.allow_tf32)
PY
# Every torch and JAX test is parametrised over devices; select the CUDA instances.
python -m pytest -q -x tests/torch_impl -k cuda
frameworks=(--framework torch)
if python -c "import jax; print('jax', jax.__version__, '|', jax.devices('gpu'))" 2>/dev/null; then
    frameworks=()
    rc=0
    python -m pytest -q -x tests/jax_impl -k cuda || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "WARNING: no tests/jax_impl test matched -k cuda" >&2
    elif [ "$rc" -ne 0 ]; then
        exit "$rc"
    fi
else
    echo "WARNING: JAX has no GPU backend here: JAX tests and timings skipped" >&2
fi
python -m attnbench.cli run smoke --device cuda "${frameworks[@]}" --out "$out/smoke-cuda" --no-progress
python -m attnbench.cli run quickstart --device cuda "${frameworks[@]}" --out "$out/quickstart-cuda" --no-progress
echo "gpu_check.sh: ${SECONDS}s"
