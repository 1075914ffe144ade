"""Mean and 95% confidence half-width over seeds (Student's t; no SciPy needed).

With n seeds the half-width is ``t(0.975, n - 1) * s / sqrt(n)``, s the sample standard
deviation. The t quantiles for 1..30 degrees of freedom are tabulated; beyond, the
Cornish-Fisher expansion around the normal quantile is within 1e-4 of the exact value.
"""

from __future__ import annotations

import math

_Z975 = 1.959963984540054
# t(0.975, df) for df = 1..30
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851,
         2.364624252, 2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830,
         2.160368656, 2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.100922040,
         2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df={df!r}: must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci(values) -> tuple[float, float]:
    """(mean, 95% t-interval half-width); the half-width is NaN for a single value (unknown,
    not zero)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values: need at least one")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t975(n - 1) * math.sqrt(var / n)


def summarise_approximation(per_seed: list[dict[str, float]]) -> dict:
    """``approx_<name>`` (mean over seeds) and ``approx_<name>_ci`` for the output error, the
    gradient error and the recall of each seed, plus ``approx_n_seeds``."""
    result: dict = {}
    for name in ("out_rel_err", "grad_rel_err", "recall"):
        if any(m[name] is None for m in per_seed):  # a registered attention's recall
            result[f"approx_{name}"] = result[f"approx_{name}_ci"] = None
            continue
        mean, half_width = mean_ci([m[name] for m in per_seed])
        result[f"approx_{name}"], result[f"approx_{name}_ci"] = mean, half_width
    result["approx_n_seeds"] = len(per_seed)
    return result
