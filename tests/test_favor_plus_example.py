"""The FAVOR+ example plugin (examples/plugins/favor_plus.py), loaded by path as a suite loads
its plugins: both cores against a NumPy float64 reference written here (outputs and
gradients, causal and not), torch against JAX on the same features, the random features
drawn only from the generator / key, the approximation improving with more features, and the
contract's output (shape and dtype of v, both frameworks registered)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from attnbench import reference as R
from attnbench.variants import ATTENTIONS, load_plugin
from tests.registry import forget_attentions
from tests.tolerances import assert_close

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "favor_plus.py"


@pytest.fixture(scope="module")
def favor():
    """The plugin module, loaded through ``load_plugin`` (the path a suite's ``plugins``
    takes); unloaded afterwards (registry and ``sys.modules``) unless it was loaded before, so
    no other test sees an attention it did not load."""
    registered = "favor+" in ATTENTIONS
    load_plugin(str(PLUGIN))
    module = sys.modules[ATTENTIONS["favor+"].torch.__module__]
    yield module
    if not registered:
        forget_attentions("favor+")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------------
# The NumPy float64 reference of the core: dense, the L x L matrix of feature products
# ---------------------------------------------------------------------------------------------


def _features(x, w, *, keys, eps):
    """phi(x) and what its VJP needs; the stabiliser is a constant (as in the plugin)."""
    xs = x * x.shape[-1] ** -0.25
    exponent = xs @ w.T - np.sum(xs * xs, -1, keepdims=True) / 2
    e = np.exp(exponent - exponent.max(axis=(-2, -1) if keys else -1, keepdims=True))
    return (e + eps) / math.sqrt(w.shape[0]), (xs, e)


def _features_vjp(d_phi, w, saved):
    xs, e = saved
    d_exponent = d_phi * e / math.sqrt(w.shape[0])
    d_xs = d_exponent @ w - np.sum(d_exponent, -1, keepdims=True) * xs
    return d_xs * xs.shape[-1] ** -0.25


def favor_reference(q, k, v, w, *, causal, eps, d_out=None):
    """out = (A v) / (A 1) with A = phi(q) phi(k)^T (lower triangle when causal): a second
    route to the cores' factorised / blockwise prefix-sum forms. With ``d_out``, returns
    (d_q, d_k, d_v)."""
    a, saved_q = _features(q, w, keys=False, eps=eps)
    b, saved_k = _features(k, w, keys=True, eps=eps)
    mask = np.tril(np.ones((q.shape[-2],) * 2)) if causal else 1.0
    scores = (a @ np.swapaxes(b, -1, -2)) * mask
    den = scores.sum(-1, keepdims=True)
    out = (scores @ v) / den
    if d_out is None:
        return out
    d_num = d_out / den
    d_den = -np.sum(d_out * out, -1, keepdims=True) / den
    d_scores = (d_num @ np.swapaxes(v, -1, -2) + d_den) * mask
    d_v = np.swapaxes(scores, -1, -2) @ d_num
    d_a, d_b = d_scores @ b, np.swapaxes(d_scores, -1, -2) @ a
    return _features_vjp(d_a, w, saved_q), _features_vjp(d_b, w, saved_k), d_v


def test_reference_gradient_matches_finite_differences(rng, favor):
    """The reference's VJP is itself checked, on a few coordinates."""
    q, k, v = (rng.standard_normal((1, 1, 6, 3)) for _ in range(3))
    w = rng.standard_normal((5, 3))
    d_out = rng.standard_normal(v.shape)
    for causal in (False, True):
        grads = favor_reference(q, k, v, w, causal=causal, eps=0.0, d_out=d_out)
        for which, grad in enumerate(grads):
            for index in [(0, 0, 0, 0), (0, 0, 3, 1), (0, 0, 5, 2)]:
                args = [q, k, v]
                hi, lo = [a.copy() for a in args], [a.copy() for a in args]
                hi[which][index] += 1e-6
                lo[which][index] -= 1e-6
                numeric = np.sum(d_out * (favor_reference(*hi, w, causal=causal, eps=0.0)
                                          - favor_reference(*lo, w, causal=causal, eps=0.0)))
                assert abs(numeric / 2e-6 - grad[index]) < 1e-6 * max(1, abs(grad[index]))


# ---------------------------------------------------------------------------------------------
# The cores against the reference, and against each other
# ---------------------------------------------------------------------------------------------

# (length, d_head, d_v, n_features, block_len): blocks that divide the length, one that does
# not (a padded last block), one block longer than the sequence, features not a multiple of d.
CASES = [
    pytest.param(64, 8, 5, 32, 16, id="L64-d8-dv5-m32-b16"),
    pytest.param(40, 6, 6, 20, 16, id="L40-d6-m20-b16-padded"),
    pytest.param(24, 4, 3, 16, 64, id="L24-d4-dv3-m16-b64"),
    pytest.param(33, 5, 2, 12, 1, id="L33-d5-dv2-m12-b1"),
]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("length", "d_head", "d_v", "n_features", "block_len"), CASES)
def test_torch_core_matches_reference(rng, favor, causal, length, d_head, d_v, n_features,
                                      block_len):
    q, k, v = (torch.tensor(rng.standard_normal(s), dtype=torch.float64, requires_grad=True)
               for s in [(2, 3, length, d_head)] * 2 + [(2, 3, length, d_v)])
    w = rng.standard_normal((n_features, d_head))
    out = favor.favor_torch_core(q, k, v, torch.tensor(w), causal=causal, block_len=block_len)
    assert out.shape == v.shape and out.dtype == torch.float64
    d_out = rng.standard_normal(out.shape)
    out.backward(torch.tensor(d_out))
    args = [t.detach().numpy() for t in (q, k, v)]
    kw = {"causal": causal, "eps": favor.FEATURE_EPS}
    assert_close(out.detach().numpy(), favor_reference(*args, w, **kw), "float64", "output")
    for name, t, ref in zip("qkv", (q, k, v), favor_reference(*args, w, d_out=d_out, **kw),
                            strict=True):
        assert_close(t.grad.numpy(), ref, "float64", f"d_{name}")


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("length", "d_head", "d_v", "n_features", "block_len"), CASES)
def test_jax_core_matches_reference(rng, favor, x64, causal, length, d_head, d_v, n_features,
                                    block_len):
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float64)
               for s in [(2, 3, length, d_head)] * 2 + [(2, 3, length, d_v)])
    w = rng.standard_normal((n_features, d_head))

    def core(a, b, c):
        return favor.favor_jax_core(a, b, c, jnp.asarray(w), causal=causal, block_len=block_len)

    out, pullback = jax.vjp(jax.jit(core), q, k, v)
    assert out.shape == v.shape and out.dtype == jnp.float64
    d_out = rng.standard_normal(out.shape)
    args = [np.asarray(t) for t in (q, k, v)]
    kw = {"causal": causal, "eps": favor.FEATURE_EPS}
    assert_close(out, favor_reference(*args, w, **kw), "float64", "output")
    for name, got, ref in zip("qkv", pullback(jnp.asarray(d_out)),
                              favor_reference(*args, w, d_out=d_out, **kw), strict=True):
        assert_close(got, ref, "float64", f"d_{name}")


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_torch_and_jax_cores_agree_on_the_same_features(rng, favor, causal):
    q, k = (rng.standard_normal((2, 2, 64, 16)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((2, 2, 64, 12)).astype(np.float32)
    w = rng.standard_normal((48, 16)).astype(np.float32)
    d_out = rng.standard_normal(v.shape).astype(np.float32)
    out, pullback = jax.vjp(lambda a, b, c: favor.favor_jax_core(a, b, c, jnp.asarray(w),
                                                                 causal=causal, block_len=16),
                            *(jnp.asarray(t) for t in (q, k, v)))
    j_grads = pullback(jnp.asarray(d_out))
    tensors = [torch.tensor(t, requires_grad=True) for t in (q, k, v)]
    t_out = favor.favor_torch_core(*tensors, torch.tensor(w), causal=causal, block_len=16)
    t_out.backward(torch.tensor(d_out))
    assert out.dtype == jnp.float32 and t_out.dtype == torch.float32
    assert_close(out, t_out.detach().numpy(), "float32", "output")
    for name, got, t in zip("qkv", j_grads, tensors, strict=True):
        assert_close(got, t.grad.numpy(), "float32", f"d_{name}")


# ---------------------------------------------------------------------------------------------
# The registered functions: randomness, approximation, the contract
# ---------------------------------------------------------------------------------------------


def test_registered_for_both_frameworks(favor):
    attention = ATTENTIONS["favor+"]
    assert attention.frameworks == ("torch", "jax")
    assert attention.torch is favor.favor_torch and attention.jax is favor.favor_jax
    assert not attention.shared_qk
    load_plugin(str(PLUGIN))  # loading the same file again is a no-op
    assert ATTENTIONS["favor+"] is attention


def test_orthogonal_features_are_orthogonal_in_blocks_with_gaussian_norms(favor):
    d = 8
    for w in (favor.draw_features_torch(20, d, generator=torch.Generator().manual_seed(1)).numpy(),
              np.asarray(favor.draw_features_jax(20, d, key=jax.random.PRNGKey(1)))):
        assert w.shape == (20, d) and w.dtype == np.float32
        for block in (w[:8], w[8:16], w[16:]):
            gram = block @ block.T
            assert np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4)
        assert not np.allclose((w[:8] @ w[8:16].T), 0, atol=1e-2)  # blocks are independent
    iid = favor.draw_features_torch(20, d, generator=torch.Generator().manual_seed(1),
                                    orthogonal=False).numpy()
    assert not np.allclose(iid[:8] @ iid[:8].T - np.diag(np.diag(iid[:8] @ iid[:8].T)), 0,
                           atol=1e-2)
    with pytest.raises(ValueError, match=r"n_features=0: must be an int >= 1"):
        favor.draw_features_torch(0, d)


def test_torch_features_come_only_from_the_generator(rng, favor):
    q, k, v = (torch.tensor(rng.standard_normal((1, 2, 32, 8)), dtype=torch.float32)
               for _ in range(3))

    def run(seed=None, **kw):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return favor.favor_torch(q, k, v, causal=True, generator=generator, n_features=32,
                                 **kw)

    torch.manual_seed(123)  # the global RNG plays no part
    first = run(7)
    torch.manual_seed(456)
    assert torch.equal(run(7), first)
    assert not torch.allclose(run(8), first)
    assert torch.equal(run(None), run(0))  # None: a fresh generator seeded 0
    assert not torch.allclose(run(7, orthogonal=False), first)


def test_jax_features_come_only_from_the_key(rng, favor):
    q, k, v = (jnp.asarray(rng.standard_normal((1, 2, 32, 8)), jnp.float32) for _ in range(3))
    attend = jax.jit(lambda key: favor.favor_jax(q, k, v, causal=True, key=key, n_features=32))
    first = attend(jax.random.PRNGKey(7))
    np.testing.assert_array_equal(attend(jax.random.PRNGKey(7)), first)
    assert not np.allclose(attend(jax.random.PRNGKey(8)), first)
    eager = [favor.favor_jax(q, k, v, causal=True, key=key, n_features=32)
             for key in (None, jax.random.PRNGKey(0))]
    np.testing.assert_array_equal(*eager)  # None: PRNGKey(0)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_approximation_error_shrinks_with_more_features(rng, favor, causal):
    """The estimator's error falls like 1/sqrt(m): 16x the features should about quarter it;
    asserted: at least halved, averaged over four draws, in both frameworks. (Inputs of
    moderate norm: for large |q|, |k| the positive features' variance, ~exp(|q + k|^2), keeps
    the error high until far more features.)"""
    q, k = (0.5 * rng.standard_normal((1, 2, 64, 16)) for _ in range(2))
    v = rng.standard_normal((1, 2, 64, 8))
    exact = R.full_attention(q, k, v, causal=causal)
    tq, tk, tv = (torch.tensor(t, dtype=torch.float32) for t in (q, k, v))
    jq, jk, jv = (jnp.asarray(t, jnp.float32) for t in (q, k, v))
    errors = {}
    for n_features in (64, 1024):
        t_err = [np.mean(np.abs(favor.favor_torch(
            tq, tk, tv, causal=causal, generator=torch.Generator().manual_seed(seed),
            n_features=n_features).numpy() - exact)) for seed in range(4)]
        j_err = [np.mean(np.abs(np.asarray(favor.favor_jax(
            jq, jk, jv, causal=causal, key=jax.random.PRNGKey(seed),
            n_features=n_features)) - exact)) for seed in range(4)]
        errors[n_features] = (np.mean(t_err), np.mean(j_err))
    for framework in (0, 1):
        assert errors[1024][framework] < 0.5 * errors[64][framework], errors
    assert errors[64][0] < 0.1  # and it is an approximation of softmax attention at all


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_output_has_the_shape_and_dtype_of_v(rng, favor, causal):
    shapes = [(2, 3, 40, 8), (2, 3, 40, 8), (2, 3, 40, 5)]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        q, k, v = (torch.tensor(rng.standard_normal(s), dtype=dtype) for s in shapes)
        out = favor.favor_torch(q, k, v, causal=causal, generator=torch.Generator())
        assert out.shape == v.shape and out.dtype == dtype and out.device == v.device
        assert torch.isfinite(out).all()
    for dtype in (jnp.float32, jnp.bfloat16):
        q, k, v = (jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)
        out = favor.favor_jax(q, k, v, causal=causal, key=jax.random.PRNGKey(1))
        assert out.shape == v.shape and out.dtype == dtype
        assert np.isfinite(np.asarray(out, np.float32)).all()


@pytest.mark.parametrize(
    ("shapes", "features", "message"),
    [
        ([(1, 2, 16, 8), (1, 2, 16, 4), (1, 2, 16, 8)], (8, 8), r"k.shape=\(1, 2, 16, 4\)"),
        ([(1, 2, 16, 8), (1, 2, 16, 8), (1, 2, 8, 8)], (8, 8), r"v.shape=\(1, 2, 8, 8\)"),
        ([(1, 2, 16, 8)] * 3, (8, 4), r"features.shape=\(8, 4\): must be \[n_features >= 1, "
                                      r"d_head=8\]"),
    ],
)
def test_bad_input_is_refused_by_both_cores(favor, shapes, features, message):
    with pytest.raises(ValueError, match=message):
        favor.favor_torch_core(*(torch.ones(s) for s in shapes), torch.ones(features),
                               causal=False)
    with pytest.raises(ValueError, match=message):
        favor.favor_jax_core(*(jnp.ones(s) for s in shapes), jnp.ones(features), causal=False)
