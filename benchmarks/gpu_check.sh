#!/usr/bin/env bash
# One GPU run: everything a GPU should measure, in about eight minutes on one H200, with the
# results and the HTML report under one folder.
#
#   bash benchmarks/gpu_check.sh [DIR]      run it (default DIR: reports/runs/gpu-check)
#   bash benchmarks/gpu_check.sh --dry-run  list what it would run (works on a CPU machine)
#
# Steps: the environment (attnbench env, nvidia-smi); the CUDA tests (every torch and JAX test's
# cuda instance: the Triton and Pallas kernels compiled, against the NumPy reference); the
# gpu-check suite (LSH with 1-8 hashes and every kernel against FlashAttention / JAX's fused
# attention, fwd+bwd 4K-128K, bf16 and fp32 with TF32 off; memory over depth; the longest
# 12-layer Reformer step); its report; a summary of the figures the GPU targets are about.
# Leaves DIR/env.txt, DIR/tests.log, DIR/tests.xml, DIR/summary.md and DIR/run/ (meta.json,
# results.jsonl, results.csv, index.html). Run again with the same DIR to resume. Needs torch
# with CUDA and triton; JAX with its CUDA plugin for the JAX half (without it those rows are
# errors that say so, never CPU runs). Exit status: the tests' (1 if any failed), else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the harness reads JAX's own peak, not a pool
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

if [ "${1:-}" = "--dry-run" ]; then
    "$py" -m attnbench.cli run gpu-check --dry-run || exit
    "$py" -m pytest -q --collect-only -k cuda tests/torch_impl tests/jax_impl | tail -n 1
    exit 0
fi

dir=${1:-reports/runs/gpu-check}
mkdir -p "$dir"
{
    "$py" -m attnbench.cli env
    nvidia-smi -q 2>&1 | head -n 200
} >"$dir/env.txt" 2>&1
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch sees no CUDA device; this script measures the GPU paths" >&2
    exit 2
fi

echo "== CUDA tests"
timeout 300 "$py" -m pytest -q -p no:cacheprovider -k cuda --junitxml="$dir/tests.xml" \
    tests/torch_impl tests/jax_impl 2>&1 | tee "$dir/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== gpu-check suite"
"$py" -m attnbench.cli run gpu-check --out "$dir/run" --no-progress
"$py" -m attnbench.cli report "$dir/run"
"$py" benchmarks/gpu_summary.py "$dir/run" | tee "$dir/summary.md"
echo "gpu_check.sh: ${SECONDS}s; tests exit status $tests_rc"
[ "$tests_rc" -eq 0 ] || exit 1
