"""How well LSH attention approximates exact shared-QK attention (PyTorch; mirrored in JAX).

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
does: it is a measurement, not a fast path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from attnbench.spec import AttentionSpec
from attnbench.tasks import approx_inputs
from attnbench.tasks.experiment import load_or_train
from attnbench.tasks.stats import summarise_approximation
from attnbench.torch_impl import train as task_train
from attnbench.torch_impl.full_attention import (
    full_attention,
    shared_qk_attention,
    shared_qk_probabilities,
)
from attnbench.torch_impl.lsh_attention import hash_vectors, lsh_attention, sort_by_bucket

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# --------------------------------------------------------------------------------------------
# 1. Attention-mass recall
# --------------------------------------------------------------------------------------------


def attended_keys(buckets: torch.Tensor, *, n_buckets: int, chunk_len: int,
                  n_chunks_before: int, n_chunks_after: int) -> torch.Tensor:
    """bool [B, H, L, L]: key j is in one of query i's windows in some round.

    buckets [B, H, n_hashes, L]. The sorted order is cut into chunks; chunk c of the
    concatenated rounds sees chunks c + o for o in [-before, after] (wrapping), as
    ``lsh_attention`` does. Scattered one round's queries at a time to bound the index memory.
    """
    batch, heads, n_hashes, length = buckets.shape
    groups = batch * heads
    sticker, _ = sort_by_bucket(buckets, n_buckets)  # (B, H, n_hashes*L)
    positions = (sticker % length).view(groups, -1, chunk_len)  # (G, n_chunks, C)
    offsets = range(-n_chunks_before, n_chunks_after + 1)
    window = torch.cat([positions.roll(-o, dims=1) for o in offsets], dim=2)  # (G, nc, W*C)
    attended = torch.zeros(groups, length, length, dtype=torch.bool, device=buckets.device)
    per_round = length // chunk_len
    group = torch.arange(groups, device=buckets.device)[:, None, None, None]
    for r in range(n_hashes):
        rows = slice(r * per_round, (r + 1) * per_round)
        attended[group, positions[:, rows, :, None], window[:, rows, None, :]] = True
    return attended.view(batch, heads, length, length)


def attention_recall(qk: torch.Tensor, buckets: torch.Tensor, *, spec: AttentionSpec,
                     n_buckets: int) -> torch.Tensor:
    """Per query [B, H, L]: exact probability mass on the keys LSH attends to. The exact
    probabilities are exact shared-QK attention's own (:func:`shared_qk_probabilities`, the
    masking ``shared_qk_attention`` applies), so recall measures the distribution that the
    output error is taken against."""
    attended = attended_keys(buckets, n_buckets=n_buckets, chunk_len=spec.chunk_len,
                             n_chunks_before=spec.n_chunks_before,
                             n_chunks_after=spec.n_chunks_after)
    probs = shared_qk_probabilities(qk, causal=spec.causal)
    return (probs * attended).sum(-1)


# --------------------------------------------------------------------------------------------
# 2. One seed: output error, gradient error, recall
# --------------------------------------------------------------------------------------------


def relative_l2(actual: list, expected: list) -> float:
    """||actual - expected|| / ||expected|| over several tensors taken together, in float64."""
    pairs = [(a.detach().double(), e.detach().double()) for a, e in zip(actual, expected,
                                                                         strict=True)]
    diff = sum(float((a - e).pow(2).sum()) for a, e in pairs)
    return (diff / sum(float(e.pow(2).sum()) for _, e in pairs)) ** 0.5


def approximate(qk: torch.Tensor, v: torch.Tensor, d_out: torch.Tensor, *,
                spec: AttentionSpec, rotations: torch.Tensor) -> dict[str, float]:
    """The three measurements of one seed. qk, v, d_out [B, H, L, dh] in the measured dtype;
    rotations [H, dh, n_hashes, n_buckets // 2]. Both attentions run in that dtype, so the
    errors are the approximation's, not the precision's."""
    n_buckets = spec.buckets_for(qk.shape[2])
    qk, v = qk.detach().requires_grad_(True), v.detach().requires_grad_(True)
    out, buckets = lsh_attention(
        qk, v, n_buckets=n_buckets, n_hashes=spec.n_hashes, chunk_len=spec.chunk_len,
        causal=spec.causal, rotations=rotations, n_chunks_before=spec.n_chunks_before,
        n_chunks_after=spec.n_chunks_after, dedup=spec.dedup, return_buckets=True)
    grads = torch.autograd.grad(out, (qk, v), d_out)
    exact = shared_qk_attention(qk, v, causal=spec.causal)
    exact_grads = torch.autograd.grad(exact, (qk, v), d_out)
    with torch.no_grad():
        recall = attention_recall(qk, buckets, spec=spec, n_buckets=n_buckets)
    return {"out_rel_err": relative_l2([out], [exact]),
            "grad_rel_err": relative_l2(list(grads), list(exact_grads)),
            "recall": float(recall.double().mean())}


def approximate_registered(qk: torch.Tensor, v: torch.Tensor, d_out: torch.Tensor, *,
                           spec: AttentionSpec, seed: int) -> dict:
    """A registered attention (``spec.kind == "custom"``) against exact softmax attention on
    the same inputs (``q = k = qk``): the output and gradient errors of one seed. Its
    randomness is a generator seeded with ``seed``. Recall is None: the contract does not
    say which keys a function attended to."""
    from attnbench.torch_impl.custom_attention import attend

    qk, v = qk.detach().requires_grad_(True), v.detach().requires_grad_(True)
    generator = torch.Generator(device=qk.device).manual_seed(seed)
    out = attend(spec, qk, qk, v, generator=generator)
    grads = torch.autograd.grad(out, (qk, v), d_out)
    exact = full_attention(qk, qk, v, causal=spec.causal)
    exact_grads = torch.autograd.grad(exact, (qk, v), d_out)
    return {"out_rel_err": relative_l2([out], [exact]),
            "grad_rel_err": relative_l2(list(grads), list(exact_grads)), "recall": None}


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
    model = task_train.build_model(config, weights)
    tokens = torch.from_numpy(approx_inputs.trained_tokens(
        seed=seed, batch=batch, length=length, vocab_size=config.vocab_size))
    with torch.no_grad():
        return _layer_qkv(model, tokens, n_heads)


def _layer_qkv(model, tokens: torch.Tensor, n_heads: int):
    """Layer 0's shared query-keys and values [B, H, L, dh] for ``tokens`` [B, L]."""
    batch, length = tokens.shape
    x = model.embed(tokens) + model.positions(torch.arange(length))  # (B, L, d_model)
    block = model.stack.blocks[0].f
    h = block.norm(x)
    qk, v = block.attention.w_qk(h), block.attention.w_v(h)
    return tuple(t.view(batch, length, n_heads, -1).transpose(1, 2) for t in (qk, v))


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
    for s in range(seed, seed + n_seeds):
        if inputs == "trained":
            qk, v = trained_inputs(seed=s, model_seed=seed, batch=batch, n_heads=heads,
                                   length=length, d_model=d_model,
                                   checkpoint_dir=checkpoint_dir)
        else:
            qk, v = (torch.from_numpy(a) for a in approx_inputs.synthetic_qkv(
                inputs, seed=s, batch=batch, n_heads=heads, length=length, d_head=d_head,
                n_clusters=n_clusters))
        d_out = torch.from_numpy(approx_inputs.cotangent(seed=s, shape=tuple(v.shape)))
        as_dtype = functools.partial(torch.Tensor.to, device=device, dtype=_DTYPES[dtype])
        if attention.kind == "custom":
            per_seed.append(approximate_registered(as_dtype(qk), as_dtype(v), as_dtype(d_out),
                                                   spec=attention, seed=s))
            continue
        rotations = torch.from_numpy(approx_inputs.rotations(
            seed=s, n_heads=heads, d_head=d_head, n_hashes=attention.n_hashes,
            n_buckets=n_buckets))
        per_seed.append(approximate(as_dtype(qk), as_dtype(v), as_dtype(d_out), spec=attention,
                                    rotations=rotations.to(device)))
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
    pairs = torch.from_numpy(np.stack([a, b], axis=1).reshape(-1, a.shape[1])).float()
    qk = pairs.expand(1, n_rounds, *pairs.shape)  # (1, n_rounds, 2N, d)
    rotations = torch.from_numpy(rounds).permute(1, 0, 2)[:, :, None]  # (n_rounds, d, 1, nb/2)
    buckets = hash_vectors(qk, rotations)[0, :, 0].view(n_rounds, -1, 2)  # (n_rounds, N, 2)
    return (buckets[..., 0] == buckets[..., 1]).double().mean(0).numpy()
