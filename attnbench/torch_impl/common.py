"""Pieces every PyTorch layer shares: mask constants, input checks, explicit randomness."""

from __future__ import annotations

import math

import torch

from attnbench import checks
from attnbench.reference import KEY_NORM_EPS, MASK_VALUE, SELF_MASK_VALUE

__all__ = ["KEY_NORM_EPS", "MASK_VALUE", "SELF_MASK_VALUE", "check_qkv", "derive_generator",
           "derive_seed", "draw_seeds",
           "dropout", "logits_dtype", "normalize_keys"]

_SEED_MASK = (1 << 63) - 1
_STREAM_STRIDE = 0x9E3779B97F4A7C15  # odd constant: distinct streams get far-apart seeds


def check_qkv(tensors: dict[str, torch.Tensor], *, same_d: bool) -> None:
    """ValueError unless all are [batch, heads, length, d] alike (see attnbench.checks)."""
    checks.check_qkv({name: (tuple(t.shape), t.is_floating_point())
                      for name, t in tensors.items()}, same_d=same_d)


def logits_dtype(x: torch.Tensor) -> torch.dtype:
    """Logits, masks and softmax run in float32, or float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def normalize_keys(qk: torch.Tensor) -> torch.Tensor:
    """k = q * rsqrt(mean(q**2) + eps) / sqrt(d), in the logits dtype (unit-length keys)."""
    qk = qk.to(logits_dtype(qk))
    return qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + KEY_NORM_EPS) / math.sqrt(
        qk.shape[-1])


def derive_seed(seed: int, stream: int) -> int:
    """A seed for sub-stream ``stream`` of ``seed`` (distinct streams, far-apart seeds)."""
    return (seed + (stream + 1) * _STREAM_STRIDE) & _SEED_MASK


def derive_generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one (seed, stream) pair: the same pair always replays the same draws,
    and nothing touches the global RNG."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, stream))
    return gen


def draw_seeds(count: int, generator: torch.Generator | None) -> list[int]:
    """``count`` fresh seeds from ``generator`` (from the global CPU RNG when None: drawn
    from, never reseeded, so ``torch.manual_seed`` at the start makes a run reproducible)."""
    return torch.randint(0, _SEED_MASK, (count,), generator=generator).tolist()


def dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawing its mask from ``generator`` (replayable, unlike F.dropout)."""
    if rate == 0.0:
        return x
    if generator is None:
        raise ValueError("dropout > 0 needs an explicit generator (got generator=None)")
    keep = torch.empty_like(x).bernoulli_(1.0 - rate, generator=generator)
    return x * keep / (1.0 - rate)


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:N]``; asking for CUDA without it is an error, never a CPU run."""
    if name.partition(":")[0] not in ("cpu", "cuda") or name.startswith("cpu:") or (
            name.partition(":")[2] and not name.partition(":")[2].isdigit()):
        raise ValueError(f"device={name!r}: must be cpu, cuda or cuda:N")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked but torch {torch.__version__} sees no CUDA "
                           f"device; not measuring on the CPU instead")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"device={name!r} asked but torch sees {torch.cuda.device_count()} "
                           f"GPU(s)")
    return torch.device(name)
