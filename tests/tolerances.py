"""Every numerical tolerance of the test suite, in one table, with its reason.

Errors are measured as max|actual - expected| / max(max|expected|, 1): relative to the size of
the values for O(1)-and-larger outputs, absolute for tiny ones.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = {
    # float64 everywhere: only summation order differs from the reference.
    "float64": 1e-10,
    # float32 against the float64 reference: a few ulps (1.2e-7) grown by d-long dot products
    # and softmax sums; 1e-5 leaves ~10x headroom over the errors seen at these sizes.
    "float32": 1e-5,
    # bfloat16 / float16 activations with float32 logits: inputs, projections and outputs carry
    # 8 (bf16) or 11 (fp16) mantissa bits, so a few ulps of 2^-8 = 3.9e-3 / 2^-11 = 4.9e-4.
    "bfloat16": 3e-2,
    "float16": 5e-3,
}


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1.0))


def assert_close(actual, expected, dtype: str, what: str = "") -> None:
    """Assert ``actual`` matches ``expected`` within the table's tolerance for ``dtype``."""
    tol = TOLERANCE[dtype]
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: error {err:.3e} exceeds the {dtype} tolerance {tol:.0e}"


def tf32(x):
    """x rounded to TF32 (10 mantissa bits), as a GPU's single-pass TF32 product sees it: the
    route the kernels' 3xTF32 must beat (their float32 tests compare against it)."""
    bits = np.asarray(x, np.float32).view(np.int32)
    return ((bits + 0x1000) & -8192).view(np.float32).astype(np.float64)
