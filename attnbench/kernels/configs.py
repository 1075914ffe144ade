"""Which kernel configurations to compile: those the shipped GPU suites run, or the envelope.

A configuration is what changes a compiled kernel: framework (hence kernel), dtype, chunk
length, head sizes, causal, and the window (Pallas unrolls it; Triton loops over it at run
time). Batch, heads, length and hash rounds only change the grid, never the kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from attnbench.runner.command import SUITES_DIR
from attnbench.runner.suite import load_suite
from attnbench.spec import resolve_kernel
from attnbench.variants import get_variant

KERNEL = {"torch": "triton", "jax": "pallas"}
# Every launch a kernel makes (the same three in both: the backward is two launches).
PASSES = {"triton": ("forward", "backward-dkdv", "backward-dq"),
          "pallas": ("forward", "backward-dkdv", "backward-dq")}
DTYPES = ("bfloat16", "float16", "float32")
# The envelope: every chunk length and (padded) head size the kernels are asked to accept.
# A head size d pads to the next power of two >= 16, so these cover every d up to 256; pairs
# with d_v != d_head need no more than (max, max), so the envelope compiles d_v = d_head.
ENVELOPE_CHUNKS = (16, 32, 64, 128)
ENVELOPE_HEADS = (16, 32, 64, 128, 256)


@dataclass(frozen=True, order=True)
class KernelConfig:
    framework: str
    dtype: str
    chunk_len: int
    d_head: int
    d_v: int
    causal: bool
    n_chunks_before: int = 1
    n_chunks_after: int = 0

    @property
    def kernel(self) -> str:
        return KERNEL[self.framework]

    @property
    def passes(self) -> tuple[str, ...]:
        return PASSES[self.kernel]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def gpu_suites() -> list[str]:
    """The shipped suites with CUDA cases, by name."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml")
                  if any(c.device.startswith("cuda") for c in load_suite(p).cases))


def suite_configs(suites: Iterable[str] | None = None) -> list[KernelConfig]:
    """The configurations the fused kernels run in the given shipped suites (default: every
    suite with CUDA cases), i.e. each CUDA case whose LSH kernel resolves to a fused one."""
    found = set()
    for name in gpu_suites() if suites is None else suites:
        for case in load_suite(SUITES_DIR / f"{name}.toml").cases:
            platform = case.device.partition(":")[0]
            if case.kernel is None or platform != "cuda" or not get_variant(case.variant).hashed:
                continue
            if resolve_kernel(case.kernel, case.framework, platform) == "portable":
                continue
            d_head = case.d_model // case.n_heads
            found.add(KernelConfig(case.framework, case.dtype, case.chunk_len, d_head, d_head,
                                   case.causal))
    return sorted(found)


def envelope_configs(frameworks: Iterable[str] = ("torch", "jax")) -> list[KernelConfig]:
    """Every chunk length, head size, dtype and causal setting the kernels are asked to take,
    whether or not ``check_supported`` accepts it (the compile says what fits)."""
    return [KernelConfig(fw, dtype, chunk, d, d, causal)
            for fw in frameworks for dtype in DTYPES for chunk in ENVELOPE_CHUNKS
            for d in ENVELOPE_HEADS for causal in (True, False)]
