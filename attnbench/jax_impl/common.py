"""Pieces every JAX layer shares: mask constants, input checks, explicit precision and keys."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from attnbench import checks
from attnbench.reference import KEY_NORM_EPS, LAYER_NORM_EPS, MASK_VALUE, SELF_MASK_VALUE

__all__ = ["KEY_NORM_EPS", "LAYER_NORM_EPS", "MASK_VALUE", "PRECISION", "SELF_MASK_VALUE",
           "check_qkv", "derive_key", "dropout", "einsum", "layer_norm", "linear",
           "logits_dtype", "normalize_keys", "uniform_init"]

# float32 matmuls at full precision everywhere: on a GPU the default may be TF32 or bf16 passes.
PRECISION = lax.Precision.HIGHEST


def einsum(subscripts: str, *operands):
    return jnp.einsum(subscripts, *operands, precision=PRECISION)


def check_qkv(arrays: dict, *, same_d: bool) -> None:
    """ValueError unless all are [batch, heads, length, d] alike (see attnbench.checks)."""
    checks.check_qkv({name: (tuple(a.shape), jnp.issubdtype(a.dtype, jnp.floating))
                      for name, a in arrays.items()}, same_d=same_d)


def logits_dtype(x) -> jnp.dtype:
    """Logits, masks and softmax run in float32, or float64 for float64 inputs."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def normalize_keys(qk):
    """k = q * rsqrt(mean(q**2) + eps) / sqrt(d), in the logits dtype (unit-length keys)."""
    qk = qk.astype(logits_dtype(qk))
    return qk * lax.rsqrt(jnp.mean(qk * qk, -1, keepdims=True) + KEY_NORM_EPS) / math.sqrt(
        qk.shape[-1])


def derive_key(key, stream: int):
    """The key of sub-stream ``stream``: the same (key, stream) always replays the same draws."""
    return jax.random.fold_in(key, stream)


def dropout(x, rate: float, key):
    """Inverted dropout with an explicit key."""
    if rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout > 0 needs an explicit PRNG key (got key=None)")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def uniform_init(key, shape, fan_in: int, dtype):
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def linear(params: dict, x):
    """x @ weight.T (+ bias); weight is [out, in] as in torch."""
    y = jnp.matmul(x, params["weight"].T.astype(x.dtype), precision=PRECISION)
    return y + params["bias"].astype(x.dtype) if "bias" in params else y


def layer_norm(params: dict, x):
    """LayerNorm over the last axis, eps as torch's default."""
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + LAYER_NORM_EPS) * params["weight"] + params["bias"]


def resolve_device(name: str):
    """``cpu`` or ``cuda[:N]``; asking for a GPU JAX does not have is an error, never a CPU run."""
    if name.partition(":")[0] not in ("cpu", "cuda") or name.startswith("cpu:") or (
            name.partition(":")[2] and not name.partition(":")[2].isdigit()):
        raise ValueError(f"device={name!r}: must be cpu, cuda or cuda:N")
    if name == "cpu":
        return jax.devices("cpu")[0]
    index = int(name.partition(":")[2] or 0)
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as exc:
        raise RuntimeError(f"device={name!r} asked but JAX {jax.__version__} has no GPU backend "
                           f"(a CUDA jaxlib is needed: pip install 'attnbench[jax-cuda]'); not "
                           f"measuring on the CPU instead [{exc}]") from None
    if index >= len(gpus):
        raise RuntimeError(f"device={name!r} asked but JAX sees {len(gpus)} GPU(s)")
    return gpus[index]
