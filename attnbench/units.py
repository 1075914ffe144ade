"""Units shared by every writer and reader of numbers: MiB, and seconds for people."""

from __future__ import annotations

MB = 2**20  # metric names ending in _mb are MiB


def format_seconds(value: float | None) -> str:
    """``0.0123`` -> ``12.3 ms``; ``None`` -> ``-``."""
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"
