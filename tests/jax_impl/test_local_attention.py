"""JAX local (blocked sliding-window) attention against the NumPy reference (outputs and
gradients, the first chunk, the window, no L x L intermediate, bad inputs) and against torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attnbench import reference as R
from attnbench.jax_impl.local_attention import local_attention
from attnbench.torch_impl import local_attention as tla
from tests.tolerances import assert_close

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}

# (length, chunk_len, d_head, d_v): several chunk lengths, d_v != d_head, one chunk only, and
# chunks of one position.
CASES = [
    pytest.param(64, 16, 8, 5, id="L64-c16-d8-dv5"),
    pytest.param(48, 8, 7, 3, id="L48-c8-d7-dv3"),
    pytest.param(96, 32, 16, 16, id="L96-c32-d16"),
    pytest.param(32, 32, 6, 4, id="L32-one-chunk"),
    pytest.param(12, 1, 4, 2, id="L12-c1"),
]


def arrays(rng, shapes, dtype):
    return [jnp.asarray(rng.standard_normal(s), dtype=DTYPES[dtype]) for s in shapes]


def vjp(fn, *args, rng):
    """(output, cotangent, input gradients), each computed by one jitted program."""
    out = jax.jit(fn)(*args)
    d_out = jnp.asarray(rng.standard_normal(out.shape), dtype=out.dtype)
    grads = jax.jit(lambda *a: jax.vjp(fn, *a)[1](d_out))(*args)
    return out, d_out, grads


def np64(a):
    return np.asarray(a, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("length", "chunk_len", "d_head", "d_v"), CASES)
def test_local_attention_matches_reference(rng, jax_device, dtype, causal, length, chunk_len,
                                           d_head, d_v):
    q, k, v = arrays(rng, [(2, 3, length, d_head), (2, 3, length, d_head), (2, 3, length, d_v)],
                     dtype)
    kw = {"causal": causal, "chunk_len": chunk_len}
    out, d_out, grads = vjp(lambda a, b, c: local_attention(a, b, c, **kw), q, k, v, rng=rng)
    assert out.shape == v.shape and out.dtype == v.dtype
    args = [np64(t) for t in (q, k, v)]
    assert_close(out, R.local_attention(*args, **kw), dtype, "output")
    for name, got, ref in zip("qkv", grads, R.local_attention_vjp(*args, np64(d_out), **kw),
                              strict=True):
        assert_close(got, ref, dtype, f"d_{name}")


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_one_chunk_is_full_attention_and_the_first_chunk_sees_only_itself(rng, jax_device,
                                                                          causal):
    q, k, v = arrays(rng, [(1, 2, 64, 8)] * 3, "float64")
    whole = local_attention(q, k, v, causal=causal, chunk_len=64)
    args = [np64(t) for t in (q, k, v)]
    assert_close(whole, R.full_attention(*args, causal=causal), "float64", "one chunk")
    # chunk 0 has no chunk before it (no wrap-around): full attention over its own 16 keys
    first = local_attention(q, k, v, causal=causal, chunk_len=16)[:, :, :16]
    ref = R.full_attention(*(a[:, :, :16] for a in args), causal=causal)
    assert_close(first, ref, "float64", "first chunk")
    # the default chunk_len is 64
    np.testing.assert_array_equal(local_attention(q, k, v, causal=causal), whole)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_keys_outside_the_window_do_not_change_the_output(rng, jax_device, causal):
    """Chunk 2 of 4 (positions 16..23, chunk_len 8) sees chunks 1 and 2 only: changing the
    keys and values of chunks 0 and 3 leaves its rows bit for bit; changing chunk 1 does not.
    Causal: a query does not see later keys of its own chunk either."""
    q, k, v = arrays(rng, [(1, 2, 32, 8)] * 3, "float64")
    attend = jax.jit(lambda a, b, c: local_attention(a, b, c, causal=causal, chunk_len=8))
    base = np.asarray(attend(q, k, v))
    rows = slice(16, 24)
    for positions, changes in ((slice(0, 8), False), (slice(24, 32), False),
                               (slice(8, 16), True)):
        out = np.asarray(attend(q, k.at[:, :, positions].add(1.5),
                                v.at[:, :, positions].add(-2.0)))
        assert np.array_equal(out[:, :, rows], base[:, :, rows]) != changes, positions
    if causal:
        out = np.asarray(attend(q, k.at[:, :, 20:24].add(1.5), v.at[:, :, 20:24].add(-2.0)))
        np.testing.assert_array_equal(out[:, :, 16:20], base[:, :, 16:20])
        assert not np.array_equal(out[:, :, 20:24], base[:, :, 20:24])


def test_no_intermediate_holds_the_length_squared():
    """Forward and backward: no value in the program has L x L elements per (batch, head);
    the largest are the [n_chunks, C, 2C] logits, L * 2C."""
    length, chunk_len = 256, 16
    q = jnp.ones((1, 1, length, 8), jnp.float32)

    def loss(a, b, c):
        return local_attention(a, b, c, causal=True, chunk_len=chunk_len).sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, q, q)

    def sizes(jaxpr):  # every value's element count, inner programs (pjit, custom_jvp) too
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                yield int(np.prod(var.aval.shape))
            for param in eqn.params.values():
                for inner in param if isinstance(param, tuple | list) else (param,):
                    inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's Jaxpr
                    if hasattr(inner, "eqns"):
                        yield from sizes(inner)

    assert max(sizes(jaxpr.jaxpr)) == length * 2 * chunk_len


@pytest.mark.parametrize(
    ("shapes", "kwargs", "message"),
    [
        (None, {"chunk_len": 5}, r"length=64: must be a multiple of chunk_len=5 "),
        (None, {"chunk_len": 0}, r"chunk_len=0: must be an int >= 1"),
        (None, {"chunk_len": -8}, r"chunk_len=-8: must be an int >= 1"),
        (None, {"chunk_len": 8.0}, r"chunk_len=8.0: must be an int >= 1"),
        (None, {"chunk_len": True}, r"chunk_len=True: must be an int >= 1"),
        (None, {"chunk_len": 128}, r"length=64: must be a multiple of chunk_len=128"),
        ([(1, 2, 64, 8), (1, 2, 64, 4), (1, 2, 64, 8)], {}, r"k.shape=\(1, 2, 64, 4\): d_head"),
        ([(1, 2, 64, 8), (1, 2, 32, 8), (1, 2, 64, 8)], {}, r"k.shape=\(1, 2, 32, 8\): batch"),
        ([(1, 2, 64, 8), (1, 2, 64, 8), (1, 2, 64)], {}, r"v.shape=\(1, 2, 64\): must be"),
    ],
)
def test_bad_input_raises_the_torch_value_errors_before_tracing(shapes, kwargs, message):
    shapes = shapes or [(1, 2, 64, 8)] * 3
    kw = {"causal": False, "chunk_len": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda a, b, c: local_attention(a, b, c, **kw))(*(jnp.ones(s) for s in shapes))
    with pytest.raises(ValueError, match=message):
        tla.local_attention(*(torch.ones(s) for s in shapes), **kw)


def test_key_is_accepted_and_unused(rng):
    q, k, v = arrays(rng, [(1, 1, 32, 4)] * 3, "float32")
    out = local_attention(q, k, v, causal=False, key=jax.random.key(3), chunk_len=8)
    np.testing.assert_array_equal(out, local_attention(q, k, v, causal=False, chunk_len=8))


# ---------------------------------------------------------------------------------------------
# Cross-framework parity, float32 on CPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("chunk_len", [8, 32])
def test_torch_and_jax_agree(rng, causal, chunk_len):
    q, k, v = arrays(rng, [(2, 2, 64, 16), (2, 2, 64, 16), (2, 2, 64, 12)], "float32")
    kw = {"causal": causal, "chunk_len": chunk_len}
    out, d_out, j_grads = vjp(lambda a, b, c: local_attention(a, b, c, **kw), q, k, v, rng=rng)
    tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in (q, k, v)]
    t_out = tla.local_attention(*tensors, **kw)
    t_out.backward(torch.tensor(np.asarray(d_out)))
    assert_close(out, t_out.detach().numpy(), "float32", "output")
    for name, got, t in zip("qkv", j_grads, tensors, strict=True):
        assert_close(got, t.grad.numpy(), "float32", f"d_{name}")
