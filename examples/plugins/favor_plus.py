"""FAVOR+ (the Performer's attention: Choromanski et al. 2020, "Rethinking Attention with
Performers") as an attnbench attention plugin: one file, outside the package, as a researcher
would write it. Load it from a suite (``plugins = ["../examples/plugins/favor_plus.py"]``
in a suite in ``suites/``: paths are relative to the suite file) and name ``favor+`` wherever
an attention is asked for.

Softmax attention ``softmax(q k^T / sqrt(d)) v`` is approximated with positive random features:
with ``x`` scaled by ``d_head ** -0.25`` (so ``exp(q'.k') = exp(q.k / sqrt(d))``) and ``m``
feature vectors ``w`` (rows of ``features``, [m, d_head]),

    phi(x) = exp(w . x - |x|^2 / 2) / sqrt(m),    E[phi(q) . phi(k)] = exp(q . k)

and then, without the L x L matrix:

    non-causal:  out = phi(q) (phi(k)^T v) / (phi(q) (phi(k)^T 1))
    causal:      the same with prefix sums over the length (below: blockwise).

Choices, as in the Performer code:

- **Stabiliser**: a max is subtracted from the exponent before ``exp``: per query its max over
  the features, for the keys one max per (batch, head) over all keys and features (one
  constant for every key, so the prefix sums stay exact). Both cancel in the ratio and are
  held constant for gradients (detached / ``stop_gradient``). Then ``FEATURE_EPS = 1e-4`` is
  added to every feature (the Performer code's ``eps``), so no denominator is ever zero: a
  small bias towards uniform attention.
- **Features**: Gaussian, orthogonalised in blocks of ``d_head`` (QR of a Gaussian matrix,
  signs fixed by R's diagonal, so each block is a uniformly random orthonormal set), each row
  then scaled by the norm of an independent Gaussian vector so that every row is marginally
  N(0, I) as in the iid case (the paper's "regularized" orthogonal features). ``n_features``
  need not be a multiple of ``d_head`` (the last block is cut). ``orthogonal=False`` draws iid
  Gaussian rows. One feature matrix per call, shared by every batch element and head, drawn
  only from the ``generator`` / ``key`` passed in (a fresh seed-0 generator or ``PRNGKey(0)``
  when None), in float32.
- **Causal prefix sums, blockwise**: the length is cut into blocks of ``block_len`` (the last
  one zero-padded); within a block the masked ``phi(q) phi(k)^T`` [block, block], across
  blocks an exclusive prefix sum of the per-block states ``phi(k)^T v`` [m, d_v]. Memory
  ``O(L * block_len + L / block_len * m * d_v)`` per (batch, head), not the plain cumulative
  sum's ``O(L * m * d_v)``.

The deterministic cores ``favor_torch_core`` / ``favor_jax_core`` take the feature matrix; the
registered functions ``favor_torch`` / ``favor_jax`` draw it and call them. Features,
exponents, sums and the division run in float32, or float64 for float64 inputs; the output
has ``v``'s dtype (and device).
"""

from __future__ import annotations

import math

from attnbench.variants import register_attention

FEATURE_EPS = 1e-4  # added to every positive feature (the Performer code's eps)
N_FEATURES = 256  # m, the default number of random features
BLOCK_LEN = 64  # positions per block of the causal prefix sum


def _check(q_shape, k_shape, v_shape, features_shape, block_len) -> None:
    """ValueError naming the value and the rule (the same for both frameworks)."""
    q_shape, k_shape, v_shape = tuple(q_shape), tuple(k_shape), tuple(v_shape)
    if len(q_shape) != 4 or k_shape != q_shape:
        raise ValueError(f"q.shape={q_shape}, k.shape={k_shape}: must be equal, "
                         "[batch, heads, length, d_head]")
    if len(v_shape) != 4 or v_shape[:3] != q_shape[:3]:
        raise ValueError(f"v.shape={v_shape}: must be [batch, heads, length, d_v] with the "
                         f"batch, heads and length of q.shape={q_shape}")
    features_shape = tuple(features_shape)
    if len(features_shape) != 2 or features_shape[1] != q_shape[3] or features_shape[0] < 1:
        raise ValueError(f"features.shape={features_shape}: must be [n_features >= 1, "
                         f"d_head={q_shape[3]}]")
    if isinstance(block_len, bool) or not isinstance(block_len, int) or block_len < 1:
        raise ValueError(f"block_len={block_len!r}: must be an int >= 1")


def _check_n_features(n_features) -> None:
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"n_features={n_features!r}: must be an int >= 1")


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def draw_features_torch(n_features: int, d_head: int, *, generator=None,
                        orthogonal: bool = True):
    """Random features [n_features, d_head] (float32, on the generator's device), drawn only
    from ``generator`` (a fresh generator seeded 0 when None)."""
    import torch

    _check_n_features(n_features)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    draw = {"generator": generator, "device": generator.device, "dtype": torch.float32}
    if not orthogonal:
        return torch.randn(n_features, d_head, **draw)
    n_blocks = -(-n_features // d_head)
    basis, r = torch.linalg.qr(torch.randn(n_blocks, d_head, d_head, **draw))
    basis = basis * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    rows = basis.transpose(-1, -2).reshape(n_blocks * d_head, d_head)[:n_features]
    norms = torch.linalg.vector_norm(torch.randn(n_features, d_head, **draw), dim=-1)
    return rows * norms[:, None]


def _positive_features_torch(x, features, *, keys: bool):
    """phi(x) [B, H, L, m] (x already in the compute dtype)."""
    import torch

    x = x * x.shape[-1] ** -0.25
    exponent = x @ features.transpose(0, 1) - (x * x).sum(-1, keepdim=True) / 2
    stabiliser = exponent.detach().amax(dim=(-2, -1) if keys else -1, keepdim=True)
    return (torch.exp(exponent - stabiliser) + FEATURE_EPS) / math.sqrt(features.shape[0])


def _causal_sums_torch(phi_q, phi_k, v, block_len: int):
    """(numerator [B, H, L, dv], denominator [B, H, L, 1]) of causal FAVOR+, blockwise."""
    import torch
    import torch.nn.functional as F

    batch, heads, length, m = phi_q.shape
    pad = -length % block_len
    phi_q, phi_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    n_blocks = (length + pad) // block_len
    bq, bk = (t.reshape(batch, heads, n_blocks, block_len, m) for t in (phi_q, phi_k))
    bv = v.reshape(batch, heads, n_blocks, block_len, v.shape[-1])
    # Across blocks: what every earlier block's keys contribute (an exclusive prefix sum).
    state = bk.transpose(-1, -2) @ bv  # (B, H, n, m, dv)
    key_sum = bk.sum(-2)  # (B, H, n, m)
    state_before = torch.cat([torch.zeros_like(state[:, :, :1]), state[:, :, :-1]], 2).cumsum(2)
    key_sum_before = torch.cat([torch.zeros_like(key_sum[:, :, :1]), key_sum[:, :, :-1]],
                               2).cumsum(2)
    # Within a block: the masked quadratic form, keys at or before the query.
    inner = torch.tril(bq @ bk.transpose(-1, -2))  # (B, H, n, C, C)
    num = inner @ bv + bq @ state_before
    den = inner.sum(-1, keepdim=True) + bq @ key_sum_before.unsqueeze(-1)
    return (num.reshape(batch, heads, -1, v.shape[-1])[:, :, :length],
            den.reshape(batch, heads, -1, 1)[:, :, :length])


def favor_torch_core(q, k, v, features, *, causal: bool, block_len: int = BLOCK_LEN):
    """FAVOR+ given the feature matrix ``features`` [m, d_head]: deterministic."""
    import torch

    _check(q.shape, k.shape, v.shape, features.shape, block_len)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    features = features.to(device=q.device, dtype=dtype)
    phi_q = _positive_features_torch(q.to(dtype), features, keys=False)
    phi_k = _positive_features_torch(k.to(dtype), features, keys=True)
    values = v.to(dtype)
    if causal:
        num, den = _causal_sums_torch(phi_q, phi_k, values, block_len)
    else:
        num = phi_q @ (phi_k.transpose(-1, -2) @ values)  # (B, H, L, dv)
        den = phi_q @ phi_k.sum(-2).unsqueeze(-1)  # (B, H, L, 1)
    return (num / den).to(v.dtype)


def favor_torch(q, k, v, *, causal: bool, generator=None, n_features: int = N_FEATURES,
                orthogonal: bool = True):
    """The registered torch function: draws the features from ``generator``, then
    :func:`favor_torch_core`."""
    features = draw_features_torch(n_features, q.shape[-1], generator=generator,
                                   orthogonal=orthogonal)
    return favor_torch_core(q, k, v, features, causal=causal)


# --------------------------------------------------------------------------------------------
# JAX (the same functions, in the same order)
# --------------------------------------------------------------------------------------------


def draw_features_jax(n_features: int, d_head: int, *, key=None, orthogonal: bool = True):
    """Random features [n_features, d_head] (float32), drawn only from ``key``
    (``PRNGKey(0)`` when None)."""
    import jax
    import jax.numpy as jnp

    _check_n_features(n_features)
    if key is None:
        key = jax.random.PRNGKey(0)
    if not orthogonal:
        return jax.random.normal(key, (n_features, d_head), jnp.float32)
    key_blocks, key_norms = jax.random.split(key)
    n_blocks = -(-n_features // d_head)
    basis, r = jnp.linalg.qr(jax.random.normal(key_blocks, (n_blocks, d_head, d_head),
                                               jnp.float32))
    basis = basis * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    rows = jnp.swapaxes(basis, -1, -2).reshape(n_blocks * d_head, d_head)[:n_features]
    norms = jnp.linalg.norm(jax.random.normal(key_norms, (n_features, d_head), jnp.float32),
                            axis=-1)
    return rows * norms[:, None]


def _einsum(subscripts, *operands):
    import jax
    import jax.numpy as jnp

    # full float32 precision (a GPU's default may be TF32)
    return jnp.einsum(subscripts, *operands, precision=jax.lax.Precision.HIGHEST)


def _positive_features_jax(x, features, *, keys: bool):
    """phi(x) [B, H, L, m] (x already in the compute dtype)."""
    import jax
    import jax.numpy as jnp

    x = x * x.shape[-1] ** -0.25
    exponent = _einsum("bhld,md->bhlm", x, features) - jnp.sum(x * x, -1, keepdims=True) / 2
    stabiliser = jax.lax.stop_gradient(jnp.max(exponent, axis=(-2, -1) if keys else -1,
                                               keepdims=True))
    return (jnp.exp(exponent - stabiliser) + FEATURE_EPS) / math.sqrt(features.shape[0])


def _causal_sums_jax(phi_q, phi_k, v, block_len: int):
    """(numerator [B, H, L, dv], denominator [B, H, L, 1]) of causal FAVOR+, blockwise."""
    import jax.numpy as jnp

    batch, heads, length, m = phi_q.shape
    pad = -length % block_len
    phi_q, phi_k, v = (jnp.pad(t, ((0, 0), (0, 0), (0, pad), (0, 0))) for t in (phi_q, phi_k, v))
    n_blocks = (length + pad) // block_len
    bq, bk = (t.reshape(batch, heads, n_blocks, block_len, m) for t in (phi_q, phi_k))
    bv = v.reshape(batch, heads, n_blocks, block_len, v.shape[-1])
    # Across blocks: what every earlier block's keys contribute (an exclusive prefix sum).
    state = _einsum("bhnjm,bhnjd->bhnmd", bk, bv)  # (B, H, n, m, dv)
    key_sum = bk.sum(-2)  # (B, H, n, m)
    state_before = jnp.cumsum(jnp.concatenate([jnp.zeros_like(state[:, :, :1]),
                                               state[:, :, :-1]], 2), 2)
    key_sum_before = jnp.cumsum(jnp.concatenate([jnp.zeros_like(key_sum[:, :, :1]),
                                                 key_sum[:, :, :-1]], 2), 2)
    # Within a block: the masked quadratic form, keys at or before the query.
    inner = jnp.tril(_einsum("bhnim,bhnjm->bhnij", bq, bk))  # (B, H, n, C, C)
    num = (_einsum("bhnij,bhnjd->bhnid", inner, bv)
           + _einsum("bhnim,bhnmd->bhnid", bq, state_before))
    den = inner.sum(-1, keepdims=True) + _einsum("bhnim,bhnm->bhni", bq, key_sum_before)[
        ..., None]
    return (num.reshape(batch, heads, -1, v.shape[-1])[:, :, :length],
            den.reshape(batch, heads, -1, 1)[:, :, :length])


def favor_jax_core(q, k, v, features, *, causal: bool, block_len: int = BLOCK_LEN):
    """FAVOR+ given the feature matrix ``features`` [m, d_head]: deterministic."""
    import jax.numpy as jnp

    _check(q.shape, k.shape, v.shape, features.shape, block_len)
    dtype = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
    features = jnp.asarray(features).astype(dtype)
    phi_q = _positive_features_jax(q.astype(dtype), features, keys=False)
    phi_k = _positive_features_jax(k.astype(dtype), features, keys=True)
    values = v.astype(dtype)
    if causal:
        num, den = _causal_sums_jax(phi_q, phi_k, values, block_len)
    else:
        num = _einsum("bhlm,bhmd->bhld", phi_q, _einsum("bhlm,bhld->bhmd", phi_k, values))
        den = _einsum("bhlm,bhm->bhl", phi_q, phi_k.sum(-2))[..., None]
    return (num / den).astype(v.dtype)


def favor_jax(q, k, v, *, causal: bool, key=None, n_features: int = N_FEATURES,
              orthogonal: bool = True):
    """The registered JAX function: draws the features from ``key``, then
    :func:`favor_jax_core`."""
    features = draw_features_jax(n_features, q.shape[-1], key=key, orthogonal=orthogonal)
    return favor_jax_core(q, k, v, features, causal=causal)


register_attention(
    "favor+",
    summary=f"Performer FAVOR+ (example plugin): {N_FEATURES} positive orthogonal random "
            "features, causal by blockwise prefix sums",
    torch=favor_torch,
    jax=favor_jax,
)
