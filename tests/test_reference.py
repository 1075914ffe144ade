"""The NumPy reference checks itself: hand-written gradients against finite differences, and
the count-based LSH formulation against a literal per-round transcription of the algorithm."""

import numpy as np
import pytest

from attnbench import reference as R

FD_STEP = 1e-6
# Central differences in float64: truncation ~step^2 and rounding ~1e-16/step, so ~1e-9 apart.
FD_TOL = 1e-7


def numeric_vjp(fn, x, d_out):
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + FD_STEP
        plus = np.sum(fn(x) * d_out)
        flat[i] = saved - FD_STEP
        minus = np.sum(fn(x) * d_out)
        flat[i] = saved
        grad.reshape(-1)[i] = (plus - minus) / (2 * FD_STEP)
    return grad


def check(analytic, numeric):
    err = np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(numeric)), 1.0)
    assert err < FD_TOL, f"gradient error {err:.2e} vs finite differences (tolerance {FD_TOL})"


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_full_attention_vjp(rng, causal):
    q, k, v = (rng.standard_normal((1, 2, 6, 5)) for _ in range(3))
    d_out = rng.standard_normal((1, 2, 6, 5))
    d_q, d_k, d_v = R.full_attention_vjp(q, k, v, d_out, causal=causal)
    check(d_q, numeric_vjp(lambda x: R.full_attention(x, k, v, causal=causal), q, d_out))
    check(d_k, numeric_vjp(lambda x: R.full_attention(q, x, v, causal=causal), k, d_out))
    check(d_v, numeric_vjp(lambda x: R.full_attention(q, k, x, causal=causal), v, d_out))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_shared_qk_vjp(rng, causal):
    qk, v = rng.standard_normal((1, 2, 6, 4)), rng.standard_normal((1, 2, 6, 3))
    d_out = rng.standard_normal((1, 2, 6, 3))
    d_qk, d_v = R.shared_qk_attention_vjp(qk, v, d_out, causal=causal)
    check(d_qk, numeric_vjp(lambda x: R.shared_qk_attention(x, v, causal=causal), qk, d_out))
    check(d_v, numeric_vjp(lambda x: R.shared_qk_attention(qk, x, causal=causal), v, d_out))


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_lsh_vjp_with_buckets_fixed(rng, dedup):
    qk, v = rng.standard_normal((1, 2, 8, 3)), rng.standard_normal((1, 2, 8, 2))
    buckets = rng.integers(0, 4, (1, 2, 2, 8))
    d_out = rng.standard_normal((1, 2, 8, 2))
    kw = {"buckets": buckets, "n_buckets": 4, "chunk_len": 4, "causal": True, "dedup": dedup}
    d_qk, d_v = R.lsh_attention_vjp(qk, v, d_out, **kw)
    check(d_qk, numeric_vjp(lambda x: R.lsh_attention(x, v, **kw), qk, d_out))
    check(d_v, numeric_vjp(lambda x: R.lsh_attention(qk, x, **kw), v, d_out))


def lsh_per_round(qk, v, buckets, *, n_buckets, chunk_len, causal, n_before, n_after):
    """The algorithm as trax and transformers run it, one (batch, head) at a time: sort,
    chunk, attend within windows, unsort, combine rounds by softmax of their log-sum-exps."""
    batch, heads, n_hashes, length = buckets.shape
    out = np.zeros(v.shape)
    for b in range(batch):
        for h in range(heads):
            keys = [(r * n_buckets + buckets[b, h, r, t], r * length + t)
                    for r in range(n_hashes) for t in range(length)]
            order = [slot for _, slot in sorted(keys)]
            pos = np.array(order) % length
            k_hat = R.normalize_keys(qk[b, h])
            n_chunks = len(order) // chunk_len
            round_out = np.zeros((n_hashes, length, v.shape[-1]))
            round_lse = np.zeros((n_hashes, length))
            for c in range(n_chunks):
                qs = list(range(c * chunk_len, (c + 1) * chunk_len))
                ks = [((c + o) % n_chunks) * chunk_len + i
                      for o in range(-n_before, n_after + 1) for i in range(chunk_len)]
                for s in qs:
                    i = pos[s]
                    logits = np.array([qk[b, h, i] @ k_hat[pos[j]] for j in ks])
                    for n, j in enumerate(ks):
                        if pos[j] == i:
                            logits[n] = R.SELF_MASK_VALUE
                        if causal and pos[j] > i:
                            logits[n] = R.MASK_VALUE
                    lse = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
                    probs = np.exp(logits - lse)
                    r = order[s] // length
                    round_out[r, i] = probs @ v[b, h, pos[ks]]
                    round_lse[r, i] = lse
            weights = np.exp(round_lse - round_lse.max(0))
            weights /= weights.sum(0)
            out[b, h] = np.einsum("rl,rld->ld", weights, round_out)
    return out


@pytest.mark.parametrize(
    ("n_hashes", "chunk_len", "causal", "n_before", "n_after"),
    [(1, 4, False, 1, 0), (2, 4, True, 1, 0), (3, 2, False, 1, 1), (2, 8, True, 2, 0)],
)
def test_count_formulation_equals_per_round_combination(rng, n_hashes, chunk_len, causal,
                                                        n_before, n_after):
    qk, v = rng.standard_normal((2, 2, 8, 5)), rng.standard_normal((2, 2, 8, 3))
    rotations = rng.standard_normal((2, 5, n_hashes, 2))
    buckets = R.hash_buckets(qk, rotations)
    kw = {"n_buckets": 4, "chunk_len": chunk_len, "causal": causal}
    expected = lsh_per_round(qk, v, buckets, n_before=n_before, n_after=n_after, **kw)
    actual = R.lsh_attention(qk, v, rotations=rotations, n_chunks_before=n_before,
                             n_chunks_after=n_after, **kw)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


def test_lsh_with_one_chunk_and_no_look_back_is_shared_qk(rng):
    qk, v = rng.standard_normal((1, 2, 8, 4)), rng.standard_normal((1, 2, 8, 4))
    rotations = rng.standard_normal((2, 4, 1, 2))
    lsh = R.lsh_attention(qk, v, rotations=rotations, n_buckets=4, chunk_len=8, causal=True,
                          n_chunks_before=0)
    np.testing.assert_allclose(lsh, R.shared_qk_attention(qk, v, causal=True), rtol=1e-13)


def test_first_causal_token_attends_to_itself(rng):
    qk, v = rng.standard_normal((1, 1, 5, 4)), rng.standard_normal((1, 1, 5, 3))
    out = R.shared_qk_attention(qk, v, causal=True)
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 0], rtol=1e-13)


def ff_params(rng, d_model=4, d_ff=6):
    return {"ln_gamma": 1 + 0.1 * rng.standard_normal(d_model),
            "ln_beta": 0.1 * rng.standard_normal(d_model),
            "w1": rng.standard_normal((d_model, d_ff)) / 2, "b1": rng.standard_normal(d_ff),
            "w2": rng.standard_normal((d_ff, d_model)) / 2, "b2": rng.standard_normal(d_model)}


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_vjp_and_chunking(rng, activation):
    params = ff_params(rng)
    x, d_y = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 4))
    d_x, d_params = R.feed_forward_vjp(x, params, d_y, activation=activation)
    check(d_x, numeric_vjp(lambda z: R.feed_forward(z, params, activation=activation), x, d_y))
    for name in params:
        def with_param(p, name=name):
            return R.feed_forward(x, {**params, name: p}, activation=activation)
        check(d_params[name], numeric_vjp(with_param, params[name].copy(), d_y))
    np.testing.assert_allclose(R.feed_forward(x, params, activation=activation, chunk_len=4),
                               R.feed_forward(x, params, activation=activation), rtol=1e-14)


def test_reversible_block_inverse_and_vjp(rng):
    pf, pg = ff_params(rng), ff_params(rng)

    def f(x):
        return R.feed_forward(x, pf, activation="gelu")

    def g(x):
        return R.feed_forward(x, pg, activation="relu")

    x1, x2 = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    y1, y2 = R.reversible_block_forward(x1, x2, f, g)
    r1, r2 = R.reversible_block_inverse(y1, y2, f, g)
    np.testing.assert_allclose(r1, x1, atol=1e-13)
    np.testing.assert_allclose(r2, x2, atol=1e-13)
    d_y1, d_y2 = rng.standard_normal(y1.shape), rng.standard_normal(y2.shape)
    _, _, d_x1, d_x2, _, _ = R.reversible_block_vjp(
        y1, y2, d_y1, d_y2,
        lambda x, d: R.feed_forward_vjp(x, pf, d, activation="gelu"),
        lambda x, d: R.feed_forward_vjp(x, pg, d, activation="relu"), f, g)

    def loss_input(which):
        def fn(z):
            a, b = (z, x2) if which == 1 else (x1, z)
            return np.concatenate(R.reversible_block_forward(a, b, f, g), -1)
        return fn

    d_cat = np.concatenate([d_y1, d_y2], -1)
    check(d_x1, numeric_vjp(loss_input(1), x1.copy(), d_cat))
    check(d_x2, numeric_vjp(loss_input(2), x2.copy(), d_cat))
