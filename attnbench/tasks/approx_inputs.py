"""Seeded NumPy inputs of the approximation measurement, shared by both frameworks.

For one seed: shared query-keys ``qk`` and values ``v`` [batch, heads, length, d_head], an
output cotangent ``d_out`` (the input gradient is the VJP of this direction) and the LSH
rotations. Both frameworks measure on the very same arrays and rotations, so their numbers
differ only by floating-point rounding (and a bucket tie, should one ever occur).

Inputs:
- ``random``: qk, v ~ N(0, 1): no structure for hashing to find (attention is diffuse);
- ``clustered``: every position's qk is one of ``n_clusters`` random centres plus noise of a
  tenth of its size, so the exact attention mass of a query sits on its own cluster and LSH
  must put each cluster in one bucket (the case hashing is for);
- ``trained`` inputs come from a trained model's layer and are built per framework
  (``approximation.trained_inputs``); only the cotangent and rotations come from here.
"""

from __future__ import annotations

import numpy as np

from attnbench.tasks.config import TaskConfig
from attnbench.tasks.data import APPROX_STREAM, make_batch, stream_rng

INPUT_KINDS = ("random", "clustered", "trained")
CLUSTER_NOISE = 0.1  # the noise around a centre, relative to the centre's scale
_QKV, _COTANGENT, _ROTATIONS = 0, 1, 2  # sub-streams of one seed


def _rng(seed: int, part: int, index: int = 0) -> np.random.Generator:
    return stream_rng(seed, APPROX_STREAM, part * 1_000_003 + index)


def check_inputs(inputs: str, n_clusters: int) -> None:
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs={inputs!r}: must be one of {', '.join(INPUT_KINDS)}")
    if inputs == "clustered" and (isinstance(n_clusters, bool) or not isinstance(n_clusters, int)
                                  or n_clusters < 1):
        raise ValueError(f"n_clusters={n_clusters!r}: must be an int >= 1 for clustered inputs")


def synthetic_qkv(inputs: str, *, seed: int, batch: int, n_heads: int, length: int,
                  d_head: int, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(qk, v) float64 [batch, heads, length, d_head] for ``random`` or ``clustered``."""
    check_inputs(inputs, n_clusters)
    if inputs == "trained":
        raise ValueError("inputs='trained': built from a trained model per framework, "
                         "see approximation.trained_inputs")
    rng = _rng(seed, _QKV)
    shape = (batch, n_heads, length, d_head)
    v = rng.standard_normal(shape)
    if inputs == "random":
        return rng.standard_normal(shape), v
    centres = rng.standard_normal((batch, n_heads, n_clusters, d_head))
    member = rng.integers(0, n_clusters, size=(batch, n_heads, length))  # (B, H, L)
    qk = np.take_along_axis(centres, member[..., None], axis=2)  # (B, H, L, dh)
    return qk + CLUSTER_NOISE * rng.standard_normal(shape), v


def cotangent(*, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The output direction whose VJP is the measured input gradient, N(0, 1) float64."""
    return _rng(seed, _COTANGENT).standard_normal(shape)


def rotations(*, seed: int, n_heads: int, d_head: int, n_hashes: int,
              n_buckets: int) -> np.ndarray:
    """LSH rotations [heads, d_head, n_hashes, n_buckets // 2] float32, drawn round by round:
    the rotations of k hashes are the first k rounds of any larger count (nested configs)."""
    rounds = [_rng(seed, _ROTATIONS, r).standard_normal((n_heads, d_head, n_buckets // 2))
              for r in range(n_hashes)]
    return np.stack(rounds, axis=2).astype(np.float32)


# Keys "from a trained model": layer 0 of a 1-layer duplication model trained with exact
# shared-QK attention at the measured length and widths (nothing is downloaded). A fixed budget
# of steps and of tokens per step keeps it to seconds at short lengths; at long lengths the
# model is only partly trained (its loss curve is kept with the checkpoint).
TRAINED_STEPS = 300
TRAINED_TOKENS_PER_STEP = 2048


def trained_config(*, d_model: int, n_heads: int, length: int, seed: int) -> TaskConfig:
    """The TaskConfig of the model whose layer gives the ``trained`` inputs."""
    return TaskConfig.preset(
        "cpu", d_model=d_model, d_ff=d_model, n_heads=n_heads, length=length, seed=seed,
        steps=TRAINED_STEPS, batch=max(1, TRAINED_TOKENS_PER_STEP // length),
        train_attention="full", eval_attentions=("full",), log_every=50)


def trained_tokens(*, seed: int, batch: int, length: int, vocab_size: int) -> np.ndarray:
    """Measurement seed ``seed``'s duplication batch, fed through the trained model."""
    return make_batch("duplication", seed=seed, stream=APPROX_STREAM, index=0, batch=batch,
                      length=length, vocab_size=vocab_size).tokens


def check_args(attention, d_model: int, length: int, inputs: str, n_clusters: int,
               n_seeds: int, dtype: str, dtypes) -> None:
    """The argument checks of ``measure_approximation`` (both frameworks raise the same
    errors); ``dtypes`` are the names the framework supports."""
    from attnbench.spec import AttentionSpec

    check_inputs(inputs, n_clusters)
    if not isinstance(attention, AttentionSpec) or attention.kind not in ("lsh", "custom"):
        raise ValueError(f"attention={attention!r}: must be an AttentionSpec of kind 'lsh' "
                         "(measured against exact shared-QK attention) or 'custom' (a "
                         "registered attention, measured against exact softmax attention)")
    attention.check_d_model(d_model)
    attention.check_length(length)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds={n_seeds!r}: must be an int >= 1")
    if dtype not in dtypes:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(dtypes)}")
