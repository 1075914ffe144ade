"""How well LSH attention approximates exact shared-QK attention (JAX; mirrors the torch file).

No training: on the same ``qk`` and ``v`` (and the same rotations), LSH attention and exact
shared-QK attention are run forward and backward, and three numbers are taken per seed:
- the relative L2 error of the output, ``||out_lsh - out|| / ||out||``;
- the relative L2 error of the input gradient, the VJP of a fixed random output direction
  w.r.t. (qk, v) taken together;
- attention-mass recall: per query, the share of its exact softmax probability mass on keys
  that LSH lets it attend to (in one of its windows in some round), averaged over queries.
Inputs, output directions and rotations come from ``attnbench.tasks.approx_inputs``, so both
frameworks measure the same arrays; results are a mean and a 95% Student-t half-width over
seeds (``attnbench.tasks.stats``). Recall materialises [batch, heads, L, L], as exact attention
does: it is a measurement, not a fast path. One seed is one jitted call (spec static).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from attnbench.jax_impl import train as task_train
from attnbench.jax_impl.common import layer_norm, linear, resolve_device
from attnbench.jax_impl.full_attention import (
    full_attention,
    shared_qk_attention,
    shared_qk_probabilities,
)
from attnbench.jax_impl.lsh_attention import hash_vectors, lsh_attention, sort_by_bucket
from attnbench.spec import AttentionSpec
from attnbench.tasks import approx_inputs
from attnbench.tasks.experiment import load_or_train
from attnbench.tasks.stats import summarise_approximation

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# --------------------------------------------------------------------------------------------
# 1. Attention-mass recall
# --------------------------------------------------------------------------------------------


def attended_keys(buckets, *, n_buckets: int, chunk_len: int, n_chunks_before: int,
                  n_chunks_after: int):
    """bool [B, H, L, L]: key j is in one of query i's windows in some round.

    buckets [B, H, n_hashes, L]. The sorted order is cut into chunks; chunk c of the
    concatenated rounds sees chunks c + o for o in [-before, after] (wrapping), as
    ``lsh_attention`` does. Scattered one round's queries at a time to bound the index memory.
    """
    batch, heads, n_hashes, length = buckets.shape
    groups = batch * heads
    sticker, _ = sort_by_bucket(buckets, n_buckets)  # (B, H, n_hashes*L)
    positions = (sticker % length).reshape(groups, -1, chunk_len)  # (G, n_chunks, C)
    offsets = range(-n_chunks_before, n_chunks_after + 1)
    window = jnp.concatenate([jnp.roll(positions, -o, axis=1) for o in offsets], axis=2)
    attended = jnp.zeros((groups, length, length), dtype=bool)  # (G, L, L)
    per_round = length // chunk_len
    group = jnp.arange(groups)[:, None, None, None]
    for r in range(n_hashes):
        rows = slice(r * per_round, (r + 1) * per_round)
        attended = attended.at[group, positions[:, rows, :, None],
                               window[:, rows, None, :]].set(True)
    return attended.reshape(batch, heads, length, length)


def attention_recall(qk, buckets, *, spec: AttentionSpec, n_buckets: int):
    """Per query [B, H, L]: exact probability mass on the keys LSH attends to. The exact
    probabilities are exact shared-QK attention's own (:func:`shared_qk_probabilities`, the
    masking ``shared_qk_attention`` applies), so recall measures the distribution that the
    output error is taken against."""
    attended = attended_keys(buckets, n_buckets=n_buckets, chunk_len=spec.chunk_len,
                             n_chunks_before=spec.n_chunks_before,
                             n_chunks_after=spec.n_chunks_after)
    probs = shared_qk_probabilities(qk, causal=spec.causal)
    return jnp.sum(jnp.where(attended, probs, 0.0), -1)


# --------------------------------------------------------------------------------------------
# 2. One seed: output error, gradient error, recall
# --------------------------------------------------------------------------------------------


def relative_l2(actual: list, expected: list) -> float:
    """||actual - expected|| / ||expected|| over several arrays taken together, in float64."""
    pairs = [(np.asarray(a, np.float64), np.asarray(e, np.float64))
             for a, e in zip(actual, expected, strict=True)]
    diff = sum(float(np.sum((a - e) ** 2)) for a, e in pairs)
    return (diff / sum(float(np.sum(e**2)) for _, e in pairs)) ** 0.5


def _approximate_arrays(qk, v, d_out, rotations, *, spec: AttentionSpec):
    n_buckets = spec.buckets_for(qk.shape[2])

    def lsh(qk_, v_):
        return lsh_attention(
            qk_, v_, n_buckets=n_buckets, n_hashes=spec.n_hashes, chunk_len=spec.chunk_len,
            causal=spec.causal, rotations=rotations, n_chunks_before=spec.n_chunks_before,
            n_chunks_after=spec.n_chunks_after, dedup=spec.dedup, return_buckets=True)

    out, pullback, buckets = jax.vjp(lsh, qk, v, has_aux=True)
    exact, exact_pullback = jax.vjp(
        lambda qk_, v_: shared_qk_attention(qk_, v_, causal=spec.causal), qk, v)
    recall = attention_recall(qk, buckets, spec=spec, n_buckets=n_buckets)
    return (out, exact, pullback(d_out), exact_pullback(d_out),
            jnp.mean(recall.astype(jnp.float32)))


def approximate(qk, v, d_out, *, spec: AttentionSpec, rotations) -> dict[str, float]:
    """The three measurements of one seed. qk, v, d_out [B, H, L, dh] in the measured dtype;
    rotations [H, dh, n_hashes, n_buckets // 2]. Both attentions run in that dtype, so the
    errors are the approximation's, not the precision's."""
    out, exact, grads, exact_grads, recall = jax.jit(
        _approximate_arrays, static_argnames="spec")(qk, v, d_out, rotations, spec=spec)
    return {"out_rel_err": relative_l2([out], [exact]),
            "grad_rel_err": relative_l2(list(grads), list(exact_grads)),
            "recall": float(recall)}


def approximate_registered(qk, v, d_out, *, spec: AttentionSpec, seed: int) -> dict:
    """A registered attention (``spec.kind == "custom"``) against exact softmax attention on
    the same inputs (``q = k = qk``): the output and gradient errors of one seed. Its
    randomness is ``jax.random.key(seed)``. Recall is None: the contract does not say which
    keys a function attended to."""
    from attnbench.jax_impl.custom_attention import attend

    key = jax.random.key(seed)
    out, vjp = jax.vjp(lambda a, b: attend(spec, a, a, b, key=key), qk, v)
    exact, exact_vjp = jax.vjp(lambda a, b: full_attention(a, a, b, causal=spec.causal), qk, v)
    return {"out_rel_err": relative_l2([out], [exact]),
            "grad_rel_err": relative_l2(list(vjp(d_out)), list(exact_vjp(d_out))),
            "recall": None}


# --------------------------------------------------------------------------------------------
# 3. Inputs: synthetic, or from a trained model's layer
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _trained_weights(config, checkpoint_dir: str | None) -> dict:
    trained, _, _ = load_or_train(config, framework=task_train.FRAMEWORK,
                                  train=task_train.train, checkpoint_dir=checkpoint_dir)
    return trained.weights


def trained_inputs(*, seed: int, model_seed: int, batch: int, n_heads: int, length: int,
                   d_model: int, checkpoint_dir: str | Path | None = None):
    """(qk, v) [B, H, L, dh] float32 from layer 0 of the duplication model of
    ``approx_inputs.trained_config`` (trained once per process, or loaded from
    ``checkpoint_dir``), fed measurement seed ``seed``'s batch."""
    config = approx_inputs.trained_config(d_model=d_model, n_heads=n_heads, length=length,
                                          seed=model_seed)
    weights = _trained_weights(config, None if checkpoint_dir is None else str(checkpoint_dir))
    params, _ = task_train.build_model(config, weights)
    tokens = jnp.asarray(approx_inputs.trained_tokens(
        seed=seed, batch=batch, length=length, vocab_size=config.vocab_size))
    return jax.jit(_layer_qkv, static_argnums=2)(params, tokens, n_heads)


def _layer_qkv(params, tokens, n_heads: int):
    """Layer 0's shared query-keys and values [B, H, L, dh] for ``tokens`` [B, L]."""
    batch, length = tokens.shape
    x = params["embed"]["weight"][tokens] + params["positions"]["weight"][:length]  # (B, L, d)
    block = params["stack"]["blocks"][0]["f"]
    h = layer_norm(block["norm"], x)
    qk, v = linear(block["attention"]["w_qk"], h), linear(block["attention"]["w_v"], h)
    return tuple(jnp.swapaxes(t.reshape(batch, length, n_heads, -1), 1, 2) for t in (qk, v))


# --------------------------------------------------------------------------------------------
# 4. The measurement over seeds
# --------------------------------------------------------------------------------------------


def measure_approximation(*, attention: AttentionSpec, d_model: int, length: int, batch: int,
                          inputs: str, n_clusters: int, n_seeds: int, seed: int, device: str,
                          dtype: str, checkpoint_dir: str | Path | None = None) -> dict:
    """LSH ``attention`` against exact shared-QK attention over seeds seed .. seed+n_seeds-1.

    Returns ``approx_out_rel_err``, ``approx_grad_rel_err``, ``approx_recall`` (means over
    seeds), each with ``*_ci`` (95% Student-t half-width; NaN for one seed), and
    ``approx_n_seeds``. ``inputs``: ``random``, ``clustered`` (``n_clusters`` clusters) or
    ``trained`` (``trained_inputs``; ``checkpoint_dir`` keeps the trained model on disk).
    """
    approx_inputs.check_args(attention, d_model, length, inputs, n_clusters, n_seeds, dtype,
                             _DTYPES)
    heads, d_head = attention.n_heads, attention.check_d_model(d_model)
    n_buckets = attention.buckets_for(length) if attention.kind == "lsh" else None
    per_seed = []
    with jax.default_device(resolve_device(device)):
        for s in range(seed, seed + n_seeds):
            if inputs == "trained":
                qk, v = trained_inputs(seed=s, model_seed=seed, batch=batch, n_heads=heads,
                                       length=length, d_model=d_model,
                                       checkpoint_dir=checkpoint_dir)
            else:
                qk, v = (jnp.asarray(a) for a in approx_inputs.synthetic_qkv(
                    inputs, seed=s, batch=batch, n_heads=heads, length=length, d_head=d_head,
                    n_clusters=n_clusters))
            d_out = jnp.asarray(approx_inputs.cotangent(seed=s, shape=tuple(v.shape)))
            as_dtype = functools.partial(jnp.asarray, dtype=_DTYPES[dtype])
            if attention.kind == "custom":
                per_seed.append(approximate_registered(as_dtype(qk), as_dtype(v),
                                                       as_dtype(d_out), spec=attention, seed=s))
                continue
            rotations = jnp.asarray(approx_inputs.rotations(
                seed=s, n_heads=heads, d_head=d_head, n_hashes=attention.n_hashes,
                n_buckets=n_buckets))
            per_seed.append(approximate(as_dtype(qk), as_dtype(v), as_dtype(d_out),
                                        spec=attention, rotations=rotations))
    return summarise_approximation(per_seed)


# --------------------------------------------------------------------------------------------
# 5. The hash itself: collision rate of two vectors
# --------------------------------------------------------------------------------------------


def collision_rate(a: np.ndarray, b: np.ndarray, *, n_buckets: int, n_rounds: int,
                   seed: int) -> np.ndarray:
    """Per pair [N]: the share of ``n_rounds`` random rotations that hash ``a[i]`` and ``b[i]``
    ([N, d] each) to the same bucket; for 2 buckets it estimates ``1 - angle / pi``."""
    rounds = approx_inputs.rotations(seed=seed, n_heads=1, d_head=a.shape[1], n_hashes=n_rounds,
                                     n_buckets=n_buckets)[0]  # (d, n_rounds, n_buckets // 2)
    # One round per "head" (a single matmul): every head holds all pairs, interleaved a, b.
    pairs = jnp.asarray(np.stack([a, b], axis=1).reshape(-1, a.shape[1]), jnp.float32)
    qk = jnp.broadcast_to(pairs, (1, n_rounds, *pairs.shape))  # (1, n_rounds, 2N, d)
    rotations = jnp.asarray(rounds).transpose(1, 0, 2)[:, :, None]  # (n_rounds, d, 1, nb/2)
    buckets = jax.jit(hash_vectors)(qk, rotations)[0, :, 0].reshape(n_rounds, -1, 2)
    return np.mean(np.asarray(buckets[..., 0] == buckets[..., 1], np.float64), 0)
