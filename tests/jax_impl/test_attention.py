"""JAX attention against the NumPy reference (outputs and gradients) and against torch."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import torch

from attnbench import reference as R
from attnbench.jax_impl import full_attention as jfa
from attnbench.jax_impl import lsh_attention as jlsh
from attnbench.torch_impl import full_attention as tfa
from attnbench.torch_impl import lsh_attention as tlsh
from tests.lsh_cases import KERNEL_ARGNAMES, KERNEL_CASES, LSH_ARGNAMES, LSH_CASES
from tests.tolerances import assert_close

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}


def arrays(rng, shapes, dtype):
    return [jnp.asarray(rng.standard_normal(s), dtype=DTYPES[dtype]) for s in shapes]


def vjp(fn, *args, rng):
    """(output, cotangent, input gradients), each computed by one jitted program."""
    out = jax.jit(fn)(*args)
    d_out = jnp.asarray(rng.standard_normal(out.shape), dtype=out.dtype)
    grads = jax.jit(lambda *a: jax.vjp(fn, *a)[1](d_out))(*args)
    return out, d_out, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_full_and_shared_qk_match_reference(rng, jax_device, dtype, causal):
    q, k, v = arrays(rng, [(2, 3, 33, 7), (2, 3, 33, 7), (2, 3, 33, 5)], dtype)
    out, d_out, grads = vjp(lambda a, b, c: jfa.full_attention(a, b, c, causal=causal), q, k, v,
                            rng=rng)
    args = [np.asarray(t, np.float64) for t in (q, k, v)]
    assert_close(out, R.full_attention(*args, causal=causal), dtype, "full output")
    for name, got, ref in zip("qkv", grads, R.full_attention_vjp(*args, np.asarray(d_out),
                                                                causal=causal), strict=True):
        assert_close(got, ref, dtype, f"full d_{name}")
    out, d_out, (d_qk, d_v) = vjp(lambda a, c: jfa.shared_qk_attention(a, c, causal=causal), q, v,
                                  rng=rng)
    ref_dqk, ref_dv = R.shared_qk_attention_vjp(args[0], args[2], np.asarray(d_out),
                                                causal=causal)
    assert_close(out, R.shared_qk_attention(args[0], args[2], causal=causal), dtype, "shared")
    assert_close(d_qk, ref_dqk, dtype, "shared d_qk")
    assert_close(d_v, ref_dv, dtype, "shared d_v")


def test_fused_full_attention_matches_reference_in_float32(rng, jax_device):
    """jax.nn.dot_product_attention computes in float32 even for float64 inputs, so the fused
    path is held to the float32 tolerance."""
    q, k, v = arrays(rng, [(1, 2, 40, 8)] * 3, "float32")
    for causal in (False, True):
        out = jfa.full_attention(q, k, v, causal=causal, impl="fused")
        ref = R.full_attention(*(np.asarray(t, np.float64) for t in (q, k, v)), causal=causal)
        assert_close(out, ref, "float32", f"fused causal={causal}")




@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(LSH_ARGNAMES, LSH_CASES)
def test_lsh_matches_reference(rng, jax_device, dtype, causal, length, d_head, n_hashes,
                               n_buckets, chunk_len, n_before, n_after, dedup):
    n_after = 0 if causal else n_after
    qk, v = arrays(rng, [(2, 3, length, d_head), (2, 3, length, 6)], dtype)
    rotations = jnp.asarray(rng.standard_normal((3, d_head, n_hashes, n_buckets // 2)),
                            DTYPES[dtype])
    kw = {"n_buckets": n_buckets, "chunk_len": chunk_len, "causal": causal,
          "n_chunks_before": n_before, "n_chunks_after": n_after, "dedup": dedup}
    buckets = np.asarray(jax.jit(jlsh.hash_vectors)(qk, rotations))
    ref_buckets = R.hash_buckets(np.asarray(qk, np.float64), np.asarray(rotations, np.float64))
    if dtype == "float64":
        np.testing.assert_array_equal(buckets, ref_buckets)
    else:  # an argmax near-tie may round the other way in float32
        assert np.mean(buckets == ref_buckets) > 0.99
    out, d_out, (d_qk, d_v) = vjp(
        lambda a, b: jlsh.lsh_attention(a, b, n_hashes=n_hashes, rotations=rotations, **kw),
        qk, v, rng=rng)
    args = [np.asarray(qk, np.float64), np.asarray(v, np.float64)]
    assert_close(out, R.lsh_attention(*args, buckets=buckets, **kw), dtype, "output")
    ref_dqk, ref_dv = R.lsh_attention_vjp(*args, np.asarray(d_out), buckets=buckets, **kw)
    assert_close(d_qk, ref_dqk, dtype, "d_qk")
    assert_close(d_v, ref_dv, dtype, "d_v")


@pytest.mark.parametrize(KERNEL_ARGNAMES, KERNEL_CASES)
def test_pallas_kernel_matches_reference(rng, jax_device, heads, length, d_head, n_hashes,
                                         chunk_len, n_before, n_after, causal):
    """The fused kernel through the whole layer function (hash, sort, band, combine) in
    float32; on the CPU it runs in the Pallas interpreter (the portable core is checked on the
    LSH cases above)."""
    kernel = "pallas"
    qk, v = arrays(rng, [(1, heads, length, d_head), (1, heads, length, 16)], "float32")
    buckets = rng.integers(0, 4, (1, heads, n_hashes, length)).astype(np.int32)
    kw = {"n_buckets": 4, "chunk_len": chunk_len, "causal": causal,
          "n_chunks_before": n_before, "n_chunks_after": n_after}
    out, d_out, (d_qk, d_v) = vjp(
        lambda a, b: jlsh.lsh_attention(a, b, n_hashes=n_hashes, buckets=jnp.asarray(buckets),
                                        kernel=kernel, **kw), qk, v, rng=rng)
    args = [np.asarray(qk, np.float64), np.asarray(v, np.float64)]
    assert_close(out, R.lsh_attention(*args, buckets=buckets, **kw), "float32", "output")
    ref_dqk, ref_dv = R.lsh_attention_vjp(*args, np.asarray(d_out), buckets=buckets, **kw)
    assert_close(d_qk, ref_dqk, "float32", "d_qk")
    assert_close(d_v, ref_dv, "float32", "d_v")


def test_fused_full_attention_implementation_per_backend_and_dtype():
    assert jfa.fused_kernel(jnp.bfloat16, "gpu") == jfa.fused_kernel(jnp.float16, "gpu") == "cudnn"
    assert jfa.fused_kernel(jnp.float32, "gpu") == "xla"  # cuDNN's flash has no float32
    assert jfa.fused_kernel(jnp.bfloat16, "cpu") == "xla"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pallas_kernel_in_low_precision_matches_reference(rng, dtype):
    low = getattr(jnp, dtype)
    qk, v = (jnp.asarray(rng.standard_normal((1, 3, 64, 32)), low) for _ in range(2))
    buckets = rng.integers(0, 4, (1, 3, 2, 64)).astype(np.int32)
    kw = {"n_buckets": 4, "chunk_len": 16, "causal": True}
    out = jax.jit(lambda a, b: jlsh.lsh_attention(a, b, n_hashes=2, buckets=jnp.asarray(buckets),
                                                  kernel="pallas", **kw))(qk, v)
    assert out.dtype == low
    ref = R.lsh_attention(np.asarray(qk, np.float64), np.asarray(v, np.float64),
                          buckets=buckets, **kw)
    assert_close(np.asarray(out, np.float64), ref, dtype, f"{dtype} output")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dedup": True}, r"dedup=True: kernel 'pallas' does not count duplicate keys"),
    ({"chunk_len": 8}, r"chunk_len=8: kernel 'pallas' needs a power of two >= 16"),
    ({"kernel": "triton"}, r"AttentionSpec.kernel='triton': must be auto or a jax kernel"),
])
def test_kernel_that_cannot_take_the_call_is_an_error(kwargs, message):
    qk = jnp.ones((1, 2, 64, 8), jnp.float32)
    args = {"n_buckets": 4, "n_hashes": 1, "chunk_len": 16, "causal": False,
            "key": jax.random.key(0), "kernel": "pallas", **kwargs}
    with pytest.raises(ValueError, match=message):
        jlsh.lsh_attention(qk, qk, **args)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_core_over_several_blocks_matches_reference_and_check_grads(rng, monkeypatch, causal):
    """Blocks of 2 chunks (the block loop's carry, gathers and wrap-around across blocks),
    against the reference and against finite differences of the custom VJP."""
    monkeypatch.setattr(jlsh, "_BLOCK_ELEMENTS", 2 * 4 * 8 * 8 * 2)  # G=4, C=8, window 2
    qk, v = arrays(rng, [(2, 2, 48, 6), (2, 2, 48, 5)], "float64")
    buckets = jnp.asarray(rng.integers(0, 6, (2, 2, 2, 48)), jnp.int32)
    kw = {"n_buckets": 6, "n_hashes": 2, "chunk_len": 8, "causal": causal}
    fn = lambda a, b: jlsh.lsh_attention(a, b, buckets=buckets, **kw)  # noqa: E731
    out, d_out, (d_qk, d_v) = vjp(fn, qk, v, rng=rng)
    args = [np.asarray(qk), np.asarray(v)]
    ref_kw = {"buckets": np.asarray(buckets), "n_buckets": 6, "chunk_len": 8, "causal": causal}
    assert_close(out, R.lsh_attention(*args, **ref_kw), "float64", "output")
    ref_dqk, ref_dv = R.lsh_attention_vjp(*args, np.asarray(d_out), **ref_kw)
    assert_close(d_qk, ref_dqk, "float64", "d_qk")
    assert_close(d_v, ref_dv, "float64", "d_v")
    jax.test_util.check_grads(fn, (qk, v), order=1, modes=("rev",))


@pytest.mark.parametrize("n_buckets", [4, 2**24], ids=["packed-key", "stable-two-operand"])
def test_sort_is_stable_and_undo_inverts_it(rng, n_buckets):
    """Both routes (one packed int32 key; a stable sort where that key would overflow)."""
    buckets = jnp.asarray(rng.integers(0, 4, (1, 2, 3, 50)), jnp.int32)
    sticker, undo = jlsh.sort_by_bucket(buckets, n_buckets)
    keys = np.asarray(buckets).reshape(1, 2, -1) + np.repeat(np.arange(3) * n_buckets, 50)
    np.testing.assert_array_equal(np.asarray(sticker), np.argsort(keys, -1, kind="stable"))
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(sticker), np.asarray(undo), -1),
                                  np.broadcast_to(np.arange(150), (1, 2, 150)))


def test_replayed_buckets_and_key_determinism(rng):
    qk, v = arrays(rng, [(1, 2, 128, 16), (1, 2, 128, 16)], "float32")
    kw = {"n_buckets": 16, "n_hashes": 2, "chunk_len": 16, "causal": True}
    hashed = jax.jit(lambda key: jlsh.lsh_attention(qk, v, key=key, return_buckets=True, **kw))
    (out_a, b_a), (out_b, b_b) = hashed(jax.random.key(7)), hashed(jax.random.key(7))
    out_c, b_c = hashed(jax.random.key(8))
    assert b_a.dtype == jnp.int32 and (b_a == b_b).all() and (out_a == out_b).all()
    assert not (b_a == b_c).all()
    replay = jax.jit(lambda b: jlsh.lsh_attention(qk, v, buckets=b, **kw))
    np.testing.assert_array_equal(replay(b_a), out_a)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_buckets": 7}, r"n_buckets=7: must be even"),
        ({"chunk_len": 5}, r"length=64: must be a multiple of chunk_len=5"),
        ({"n_hashes": 0}, r"n_hashes=0: must be an int >= 1"),
        ({"rotations": jnp.zeros((2, 8, 1, 3))}, r"rotations.shape=\(2, 8, 1, 3\): must be"),
        ({"key": None}, r"key=None: LSH attention needs a PRNG key"),
    ],
)
def test_bad_input_raises_the_torch_value_errors_before_tracing(kwargs, message):
    args = {"n_buckets": 8, "n_hashes": 1, "chunk_len": 16, "causal": False,
            "key": jax.random.key(0), **kwargs}
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda a, b: jlsh.lsh_attention(a, b, **args))(jnp.ones((1, 2, 64, 8)),
                                                                 jnp.ones((1, 2, 64, 8)))
    if "key" not in kwargs:
        torch_args = {k: (torch.zeros(2, 8, 1, 3) if k == "rotations" else val)
                      for k, val in args.items() if k != "key"}
        with pytest.raises(ValueError, match=message):
            tlsh.lsh_attention(torch.ones(1, 2, 64, 8), torch.ones(1, 2, 64, 8), **torch_args)


# ---------------------------------------------------------------------------------------------
# Cross-framework parity, float32 on CPU
# ---------------------------------------------------------------------------------------------


def torch_vjp(fn, *arrays_, d_out):
    tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in arrays_]
    out = fn(*tensors)
    out.backward(torch.tensor(np.asarray(d_out)))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("variant", ["full-naive", "full-fused", "shared_qk", "lsh-h1",
                                     "lsh-h4-causal", "lsh-h4-causal-fused"])
def test_torch_and_jax_agree(rng, variant):
    """The fused variant is torch's Triton kernel against JAX's Pallas kernel (both in their
    interpreters on the CPU)."""
    qk, k, v = arrays(rng, [(2, 2, 64, 16)] * 3, "float32")
    if variant.startswith("full"):
        impl = variant.split("-")[1]
        jfn = lambda a, c: jfa.full_attention(a, k, c, causal=True, impl=impl)  # noqa: E731
        tfn = lambda a, c: tfa.full_attention(a, torch.tensor(np.asarray(k)), c,  # noqa: E731
                                              causal=True, impl=impl)
    elif variant == "shared_qk":
        jfn = lambda a, c: jfa.shared_qk_attention(a, c, causal=False)  # noqa: E731
        tfn = lambda a, c: tfa.shared_qk_attention(a, c, causal=False)  # noqa: E731
    else:
        # Injected buckets: equal rotations can still round an argmax near-tie differently.
        n_hashes = 1 if variant == "lsh-h1" else 4
        kw = {"n_buckets": 8, "n_hashes": n_hashes, "chunk_len": 16,
              "causal": "causal" in variant}
        buckets = rng.integers(0, 8, (2, 2, n_hashes, 64)).astype(np.int32)
        fused = variant.endswith("fused")
        jkw, tkw = ({"kernel": "pallas"}, {"kernel": "triton"}) if fused else ({}, {})
        jfn = lambda a, c: jlsh.lsh_attention(a, c, buckets=jnp.asarray(buckets),  # noqa
                                              **kw, **jkw)
        tfn = lambda a, c: tlsh.lsh_attention(a, c, buckets=torch.tensor(buckets),  # noqa
                                              **kw, **tkw)
    out, d_out, j_grads = vjp(jfn, qk, v, rng=rng)
    t_out, t_grads = torch_vjp(tfn, qk, v, d_out=d_out)
    assert_close(out, t_out, "float32", f"{variant} output")
    for got, want in zip(j_grads, t_grads, strict=True):
        assert_close(got, want, "float32", f"{variant} gradient")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_lsh_is_finite_and_close(rng, jax_device, dtype):
    low = getattr(jnp, dtype)
    qk = jnp.asarray(rng.standard_normal((1, 2, 64, 16)), low)
    v = jnp.asarray(rng.standard_normal((1, 2, 64, 16)), low)
    rotations = jnp.asarray(rng.standard_normal((2, 16, 2, 4)), jnp.float32)
    kw = {"n_buckets": 8, "n_hashes": 2, "chunk_len": 16, "causal": True}
    out, buckets = jax.jit(lambda a, b: jlsh.lsh_attention(a, b, rotations=rotations,
                                                           return_buckets=True, **kw))(qk, v)
    assert out.dtype == low
    grads = jax.jit(jax.grad(lambda a, b: jlsh.lsh_attention(
        a, b, rotations=rotations, **kw).astype(jnp.float32).sum(), argnums=(0, 1)))(qk, v)
    assert all(bool(jnp.isfinite(g.astype(jnp.float32)).all()) for g in grads)
    ref = R.lsh_attention(np.asarray(qk, np.float64), np.asarray(v, np.float64),
                          buckets=np.asarray(buckets), n_buckets=8, chunk_len=16, causal=True)
    assert_close(np.asarray(out, np.float64), ref, dtype, "low-precision output")
