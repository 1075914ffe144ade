"""torch local (blocked sliding-window) attention against the NumPy reference: outputs and
gradients, the first chunk, the window, memory linear in the length, bad inputs."""

import pytest
import torch

from attnbench import reference as R
from attnbench.torch_impl.local_attention import local_attention
from tests.tolerances import assert_close

DTYPES = {"float64": torch.float64, "float32": torch.float32}

# (length, chunk_len, d_head, d_v): several chunk lengths, d_v != d_head, one chunk only, and
# chunks of one position.
CASES = [
    pytest.param(64, 16, 8, 5, id="L64-c16-d8-dv5"),
    pytest.param(48, 8, 7, 3, id="L48-c8-d7-dv3"),
    pytest.param(96, 32, 16, 16, id="L96-c32-d16"),
    pytest.param(32, 32, 6, 4, id="L32-one-chunk"),
    pytest.param(12, 1, 4, 2, id="L12-c1"),
]


def leaves(rng, shapes, dtype, device):
    return [torch.tensor(rng.standard_normal(s), dtype=DTYPES[dtype], device=device,
                         requires_grad=True) for s in shapes]


def np64(t):
    return t.detach().cpu().double().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("length", "chunk_len", "d_head", "d_v"), CASES)
def test_local_attention_matches_reference(rng, device, dtype, causal, length, chunk_len,
                                           d_head, d_v):
    q, k, v = leaves(rng, [(2, 3, length, d_head), (2, 3, length, d_head), (2, 3, length, d_v)],
                     dtype, device)
    out = local_attention(q, k, v, causal=causal, chunk_len=chunk_len)
    assert out.shape == v.shape and out.dtype == v.dtype and out.device == v.device
    d_out = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=device)
    out.backward(d_out)
    args = [np64(t) for t in (q, k, v)]
    kw = {"causal": causal, "chunk_len": chunk_len}
    assert_close(np64(out), R.local_attention(*args, **kw), dtype, "output")
    for name, t, ref in zip("qkv", (q, k, v), R.local_attention_vjp(*args, np64(d_out), **kw),
                            strict=True):
        assert_close(np64(t.grad), ref, dtype, f"d_{name}")


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_one_chunk_is_full_attention_and_the_first_chunk_sees_only_itself(rng, device, causal):
    q, k, v = leaves(rng, [(1, 2, 64, 8)] * 3, "float64", device)
    whole = local_attention(q, k, v, causal=causal, chunk_len=64)
    args = [np64(t) for t in (q, k, v)]
    assert_close(np64(whole), R.full_attention(*args, causal=causal), "float64", "one chunk")
    # chunk 0 has no chunk before it (no wrap-around): full attention over its own 16 keys
    first = local_attention(q, k, v, causal=causal, chunk_len=16)[:, :, :16]
    ref = R.full_attention(*(a[:, :, :16] for a in args), causal=causal)
    assert_close(np64(first), ref, "float64", "first chunk")
    # the default chunk_len is 64
    assert torch.equal(local_attention(q, k, v, causal=causal), whole)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_keys_outside_the_window_do_not_change_the_output(rng, device, causal):
    """Chunk 2 of 4 (positions 16..23, chunk_len 8) sees chunks 1 and 2 only: changing the
    keys and values of chunks 0 and 3 leaves its rows bit for bit; changing chunk 1 does not.
    Causal: a query does not see later keys of its own chunk either."""
    q, k, v = (t.detach() for t in leaves(rng, [(1, 2, 32, 8)] * 3, "float64", device))
    base = local_attention(q, k, v, causal=causal, chunk_len=8)
    rows = slice(16, 24)
    for positions, changes in ((slice(0, 8), False), (slice(24, 32), False),
                               (slice(8, 16), True)):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, positions] += 1.5
        v2[:, :, positions] -= 2.0
        out = local_attention(q, k2, v2, causal=causal, chunk_len=8)
        assert torch.equal(out[:, :, rows], base[:, :, rows]) != changes, positions
    if causal:
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 20:24] += 1.5
        v2[:, :, 20:24] -= 2.0
        out = local_attention(q, k2, v2, causal=True, chunk_len=8)
        assert torch.equal(out[:, :, 16:20], base[:, :, 16:20])
        assert not torch.equal(out[:, :, 20:24], base[:, :, 20:24])


def test_saved_memory_grows_linearly_with_the_length(rng):
    """What autograd keeps is O(L * 2 * chunk_len), never the L x L matrix: doubling the
    length doubles it, and at L = 256 it is far below one float32 L x L matrix."""
    from tests.torch_impl.helpers import SavedBytes

    saved = {}
    for length in (128, 256):
        q, k, v = leaves(rng, [(1, 1, length, 8)] * 3, "float32", "cpu")
        with SavedBytes() as counter:
            local_attention(q, k, v, causal=True, chunk_len=16)
        saved[length] = counter.total
    assert saved[256] <= 2.2 * saved[128]
    assert saved[256] < 256 * 256 * 4 / 2


def test_low_precision_output_is_finite_and_like_v(rng):
    q, k, v = (torch.tensor(rng.standard_normal((1, 2, 32, 8)), dtype=torch.bfloat16)
               for _ in range(3))
    out = local_attention(q, k, v, causal=True, chunk_len=8)
    assert out.dtype == torch.bfloat16 and out.shape == v.shape
    assert torch.isfinite(out).all()
    ref = R.local_attention(*(np64(t) for t in (q, k, v)), causal=True, chunk_len=8)
    assert_close(np64(out), ref, "bfloat16", "bfloat16 output")


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
def test_bad_input_is_refused_with_the_value_and_the_rule(shapes, kwargs, message):
    q, k, v = (torch.ones(s) for s in (shapes or [(1, 2, 64, 8)] * 3))
    with pytest.raises(ValueError, match=message):
        local_attention(q, k, v, causal=False, **{"chunk_len": 16, **kwargs})


def test_generator_is_accepted_and_unused(rng):
    q, k, v = (torch.tensor(rng.standard_normal((1, 1, 32, 4))) for _ in range(3))
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    out = local_attention(q, k, v, causal=False, generator=generator, chunk_len=8)
    assert torch.equal(out, local_attention(q, k, v, causal=False, chunk_len=8))
    assert torch.equal(generator.get_state(), state)
