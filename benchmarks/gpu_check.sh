#!/usr/bin/env bash
# GPU check: the correctness tests on CUDA, then a small timing. Under 5 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            (from the repository root, torch with CUDA installed)
# Writes the timing table to $OUT/gpu_layer_bench.csv when OUT is set.
set -euo pipefail
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script checks the GPU paths"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| tf32 matmul allowed:", torch.backends.cuda.matmul.allow_tf32)
PY
# Every torch test is parametrised over devices; select the CUDA instances.
python -m pytest -q -x tests/torch_impl -k cuda
python -m attnbench.layer_bench --device cuda --impls lsh,full-fused,full-naive \
    --lengths 4096,16384 --n-hashes 1,4 --n-buckets auto --repeats 10 --timeout 120 \
    ${OUT:+--csv "$OUT/gpu_layer_bench.csv"}
