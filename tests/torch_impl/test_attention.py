"""torch attention against the NumPy reference: outputs and gradients, float64 and float32."""

import numpy as np
import pytest
import torch

from attnbench import reference as R
from attnbench.torch_impl.full_attention import full_attention, shared_qk_attention
from attnbench.torch_impl.lsh_attention import hash_vectors, lsh_attention
from tests.lsh_cases import KERNEL_ARGNAMES, KERNEL_CASES, LSH_ARGNAMES, LSH_CASES
from tests.tolerances import TOLERANCE, assert_close

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def leaves(rng, shapes, dtype, device):
    return [torch.tensor(rng.standard_normal(s), dtype=DTYPES[dtype], device=device,
                         requires_grad=True) for s in shapes]


def np64(t):
    return t.detach().cpu().double().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("impl", ["naive", "fused"])
def test_full_attention_matches_reference(rng, device, dtype, causal, impl):
    q, k, v = leaves(rng, [(2, 3, 33, 7), (2, 3, 33, 7), (2, 3, 33, 5)], dtype, device)
    out = full_attention(q, k, v, causal=causal, impl=impl)
    d_out = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=device)
    out.backward(d_out)
    args = [np64(t) for t in (q, k, v)]
    assert_close(np64(out), R.full_attention(*args, causal=causal), dtype, "output")
    for name, t, ref in zip("qkv", (q, k, v),
                            R.full_attention_vjp(*args, np64(d_out), causal=causal), strict=True):
        assert_close(np64(t.grad), ref, dtype, f"d_{name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_shared_qk_attention_matches_reference(rng, device, dtype, causal):
    qk, v = leaves(rng, [(2, 2, 29, 59), (2, 2, 29, 7)], dtype, device)
    out = shared_qk_attention(qk, v, causal=causal)
    d_out = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=device)
    out.backward(d_out)
    args = [np64(qk), np64(v)]
    assert_close(np64(out), R.shared_qk_attention(*args, causal=causal), dtype, "output")
    d_qk, d_v = R.shared_qk_attention_vjp(*args, np64(d_out), causal=causal)
    assert_close(np64(qk.grad), d_qk, dtype, "d_qk")
    assert_close(np64(v.grad), d_v, dtype, "d_v")




@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(LSH_ARGNAMES, LSH_CASES)
def test_lsh_attention_matches_reference(rng, device, dtype, causal, length, d_head, n_hashes,
                                         n_buckets, chunk_len, n_before, n_after, dedup):
    if causal and n_after:
        n_after = 0  # look-ahead chunks would be fully masked; causal specs forbid them
    qk, v = leaves(rng, [(2, 3, length, d_head), (2, 3, length, 6)], dtype, device)
    rotations = torch.tensor(rng.standard_normal((3, d_head, n_hashes, n_buckets // 2)),
                             dtype=DTYPES[dtype], device=device)
    kw = {"n_buckets": n_buckets, "chunk_len": chunk_len, "causal": causal,
          "n_chunks_before": n_before, "n_chunks_after": n_after, "dedup": dedup}
    out, buckets = lsh_attention(qk, v, n_hashes=n_hashes, rotations=rotations,
                                 return_buckets=True, **kw)
    d_out = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=device)
    out.backward(d_out)
    # Buckets are compared with the reference's own hashing; in float32 an argmax near-tie can
    # round the other way, so the reference is then evaluated on the buckets torch used.
    ref_buckets = R.hash_buckets(np64(qk), rotations.cpu().double().numpy())
    used = buckets.cpu().numpy()
    if dtype == "float64":
        np.testing.assert_array_equal(used, ref_buckets)
    else:
        assert np.mean(used == ref_buckets) > 0.99
    args = [np64(qk), np64(v)]
    assert_close(np64(out), R.lsh_attention(*args, buckets=used, **kw), dtype, "output")
    d_qk, d_v = R.lsh_attention_vjp(*args, np64(d_out), buckets=used, **kw)
    assert_close(np64(qk.grad), d_qk, dtype, "d_qk")
    assert_close(np64(v.grad), d_v, dtype, "d_v")


def test_fused_full_attention_kernel_is_pinned_per_device_and_dtype():
    from attnbench.torch_impl.full_attention import fused_kernel

    assert fused_kernel(torch.bfloat16, "cuda") == fused_kernel(torch.float16, "cuda") == "flash"
    assert fused_kernel(torch.float32, "cuda") == "efficient"  # flash has no float32
    assert fused_kernel(torch.float32, "cpu") == "cpu"


@pytest.fixture
def interpreted(device):
    """The device, where the Triton kernels can run: on the CPU only in a process whose
    Triton interpreter is on (tests/conftest.py turns it on when there is no GPU)."""
    pytest.importorskip("triton", reason="the torch LSH kernel needs triton (attnbench[test])")
    from attnbench.torch_impl import lsh_triton

    if device == "cpu" and not lsh_triton.interpreting():
        pytest.skip("Triton's interpreter is off in this process (a GPU is present)")
    return device


@pytest.mark.parametrize(KERNEL_ARGNAMES, KERNEL_CASES)
def test_triton_kernel_matches_reference(rng, interpreted, heads, length, d_head, n_hashes,
                                         chunk_len, n_before, n_after, causal):
    """The fused kernel through the whole layer function (hash, sort, band, combine) in
    float32; on the CPU it runs in the Triton interpreter (the portable core is checked on the
    LSH cases above)."""
    device = interpreted
    qk, v = leaves(rng, [(1, heads, length, d_head), (1, heads, length, 16)], "float32", device)
    buckets = rng.integers(0, 4, (1, heads, n_hashes, length)).astype(np.int32)
    kw = {"n_buckets": 4, "chunk_len": chunk_len, "causal": causal,
          "n_chunks_before": n_before, "n_chunks_after": n_after}
    out = lsh_attention(qk, v, n_hashes=n_hashes, buckets=torch.tensor(buckets, device=device),
                        kernel="triton", **kw)
    d_out = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=device)
    out.backward(d_out)
    args = [np64(qk), np64(v)]
    assert_close(np64(out), R.lsh_attention(*args, buckets=buckets, **kw), "float32", "output")
    d_qk, d_v = R.lsh_attention_vjp(*args, np64(d_out), buckets=buckets, **kw)
    assert_close(np64(qk.grad), d_qk, "float32", "d_qk")
    assert_close(np64(v.grad), d_v, "float32", "d_v")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_triton_kernel_in_low_precision_matches_reference(rng, interpreted, dtype):
    low = getattr(torch, dtype)
    qk, v = (torch.tensor(rng.standard_normal((1, 3, 64, 32)), dtype=low, device=interpreted)
             for _ in range(2))
    buckets = rng.integers(0, 4, (1, 3, 2, 64)).astype(np.int32)
    kw = {"n_buckets": 4, "chunk_len": 16, "causal": True}
    out = lsh_attention(qk, v, n_hashes=2, buckets=torch.tensor(buckets, device=interpreted),
                        kernel="triton", **kw)
    assert out.dtype == low
    ref = R.lsh_attention(np64(qk), np64(v), buckets=buckets, **kw)
    assert_close(np64(out), ref, dtype, f"{dtype} output")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dedup": True}, r"dedup=True: kernel 'triton' does not count duplicate keys"),
    ({"chunk_len": 8}, r"chunk_len=8: kernel 'triton' needs a power of two >= 16"),
    ({"kernel": "pallas"}, r"AttentionSpec.kernel='pallas': must be auto or a torch kernel"),
])
def test_kernel_that_cannot_take_the_call_is_an_error(kwargs, message):
    qk = torch.ones(1, 2, 64, 8)
    args = {"n_buckets": 4, "n_hashes": 1, "chunk_len": 16, "causal": False,
            "kernel": "triton", **kwargs}
    with pytest.raises(ValueError, match=message):
        lsh_attention(qk, qk, **args)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_core_over_several_blocks_matches_reference(rng, device, monkeypatch, causal):
    """Blocks of 3 chunks over 12 (the block loop, wrap-around across blocks); torch's twin of
    the JAX test, with gradcheck of the custom backward."""
    import attnbench.torch_impl.lsh_attention as tlsh

    monkeypatch.setattr(tlsh, "_BLOCK_ELEMENTS", 3 * 4 * 8 * 8 * 2)  # G=4, C=8, window 2
    qk, v = leaves(rng, [(2, 2, 48, 6), (2, 2, 48, 5)], "float64", device)
    buckets = torch.tensor(rng.integers(0, 6, (2, 2, 2, 48)), dtype=torch.int32, device=device)
    kw = {"n_buckets": 6, "n_hashes": 2, "chunk_len": 8, "causal": causal}
    out = lsh_attention(qk, v, buckets=buckets, **kw)
    d_out = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=device)
    out.backward(d_out)
    args = [np64(qk), np64(v)]
    ref_kw = {"buckets": buckets.cpu().numpy(), "n_buckets": 6, "chunk_len": 8,
              "causal": causal}
    assert_close(np64(out), R.lsh_attention(*args, **ref_kw), "float64", "output")
    d_qk, d_v = R.lsh_attention_vjp(*args, np64(d_out), **ref_kw)
    assert_close(np64(qk.grad), d_qk, "float64", "d_qk")
    assert_close(np64(v.grad), d_v, "float64", "d_v")
    assert torch.autograd.gradcheck(lambda a, b: lsh_attention(a, b, buckets=buckets, **kw),
                                    (qk.detach().requires_grad_(), v.detach().requires_grad_()))


def test_lsh_with_one_chunk_and_no_look_back_equals_shared_qk(rng, device):
    qk, v = leaves(rng, [(1, 2, 64, 16), (1, 2, 64, 16)], "float64", device)
    lsh = lsh_attention(qk, v, n_buckets=8, n_hashes=1, chunk_len=64, causal=True,
                        n_chunks_before=0, generator=torch.Generator(device).manual_seed(0))
    exact = shared_qk_attention(qk, v, causal=True)
    assert_close(np64(lsh), np64(exact), "float64", "LSH (one chunk) vs shared-QK")


def test_replayed_buckets_give_the_same_output(rng, device):
    qk, v = leaves(rng, [(1, 2, 64, 8), (1, 2, 64, 8)], "float32", device)
    kw = {"n_buckets": 8, "n_hashes": 2, "chunk_len": 16, "causal": False}
    out, buckets = lsh_attention(qk, v, generator=torch.Generator(device).manual_seed(1),
                                 return_buckets=True, **kw)
    assert buckets.dtype == torch.int32 and buckets.shape == (1, 2, 2, 64)
    replay = lsh_attention(qk, v, buckets=buckets, **kw)
    assert torch.equal(out, replay)


def test_same_seed_same_buckets_other_seed_different(rng, device):
    qk, v = leaves(rng, [(1, 2, 128, 16), (1, 2, 128, 16)], "float32", device)
    kw = {"n_buckets": 16, "n_hashes": 2, "chunk_len": 16, "causal": True, "return_buckets": True}

    def run(seed):
        return lsh_attention(qk, v, generator=torch.Generator(device).manual_seed(seed), **kw)

    (out_a, b_a), (out_b, b_b), (out_c, b_c) = run(7), run(7), run(8)
    assert torch.equal(b_a, b_b) and torch.equal(out_a, out_b)
    assert not torch.equal(b_a, b_c) and not torch.allclose(out_a, out_c)


def test_hash_is_argmax_over_plus_minus_rotations(rng):
    qk = torch.tensor(rng.standard_normal((2, 3, 16, 5)))
    rotations = torch.tensor(rng.standard_normal((3, 5, 2, 4)))
    np.testing.assert_array_equal(hash_vectors(qk, rotations).numpy(),
                                  R.hash_buckets(qk.numpy(), rotations.numpy()))


@pytest.mark.parametrize("kind", ["full-naive", "full-fused", "shared_qk", "lsh"])
def test_causal_outputs_ignore_later_tokens(rng, device, kind):
    """Changing queries/keys and values after position t leaves outputs up to t unchanged.

    For LSH the sort depends on every token's bucket, so later tokens may legitimately move
    earlier ones between chunks (the Reformer's nature, not a leak); the test therefore replays
    the first run's buckets, which isolates what causality means here: the masks.
    """
    qk, v = (torch.tensor(rng.standard_normal((1, 2, 64, 8)), device=device) for _ in range(2))
    t = 40
    qk2, v2 = qk.clone(), v.clone()
    qk2[:, :, t + 1:] = torch.tensor(rng.standard_normal((1, 2, 64 - t - 1, 8)), device=device)
    v2[:, :, t + 1:] += 3.0
    lsh = {"n_buckets": 8, "n_hashes": 2, "chunk_len": 8, "causal": True}
    buckets = None
    if kind == "lsh":
        _, buckets = lsh_attention(qk, v, generator=torch.Generator(device).manual_seed(3),
                                   return_buckets=True, **lsh)

    def attend(a, b):
        if kind.startswith("full"):
            return full_attention(a, a * 0.5, b, causal=True, impl=kind.split("-")[1])
        if kind == "shared_qk":
            return shared_qk_attention(a, b, causal=True)
        return lsh_attention(a, b, buckets=buckets, **lsh)

    before, after = attend(qk, v), attend(qk2, v2)
    assert not torch.allclose(before[:, :, t + 1:], after[:, :, t + 1:])
    torch.testing.assert_close(after[:, :, : t + 1], before[:, :, : t + 1], rtol=0,
                               atol=TOLERANCE["float64"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_buckets": 7}, r"n_buckets=7: must be even"),
        ({"chunk_len": 5}, r"length=64: must be a multiple of chunk_len=5"),
        ({"n_hashes": 0}, r"n_hashes=0: must be an int >= 1"),
        ({"rotations": torch.zeros(2, 8, 1, 3)}, r"rotations.shape=\(2, 8, 1, 3\): must be"),
        ({"buckets": torch.zeros(1, 2, 1, 32, dtype=torch.int32)},
         r"buckets.shape=\(1, 2, 1, 32\)"),
        ({"buckets": torch.full((1, 2, 1, 64), 8, dtype=torch.int32)},
         r"buckets: must be integers"),
    ],
)
def test_lsh_bad_input_raises_value_error(kwargs, message):
    qk, v = torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    args = {"n_buckets": 8, "n_hashes": 1, "chunk_len": 16, "causal": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        lsh_attention(qk, v, **args)


def test_attention_shape_errors_name_the_tensor():
    with pytest.raises(ValueError, match=r"v.shape=\(1, 2, 32, 8\): batch, heads and length"):
        full_attention(torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8),
                       torch.randn(1, 2, 32, 8), causal=False)
    with pytest.raises(ValueError, match=r"qk.shape=\(2, 64, 8\): must be \[batch, heads"):
        shared_qk_attention(torch.randn(2, 64, 8), torch.randn(2, 64, 8), causal=False)
    with pytest.raises(ValueError, match=r"impl='flash'"):
        full_attention(*(torch.randn(1, 1, 4, 2) for _ in range(3)), causal=False, impl="flash")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_lsh_is_finite_and_close(rng, device, dtype):
    low = getattr(torch, dtype)
    qk64 = rng.standard_normal((1, 2, 64, 16))
    v64 = rng.standard_normal((1, 2, 64, 16))
    qk = torch.tensor(qk64, dtype=low, device=device, requires_grad=True)
    v = torch.tensor(v64, dtype=low, device=device, requires_grad=True)
    rotations = torch.tensor(rng.standard_normal((2, 16, 2, 4)), device=device)
    out, buckets = lsh_attention(qk, v, n_buckets=8, n_hashes=2, chunk_len=16, causal=True,
                                 rotations=rotations, return_buckets=True)
    assert out.dtype == low
    out.float().sum().backward()
    assert torch.isfinite(qk.grad.float()).all() and torch.isfinite(v.grad.float()).all()
    ref = R.lsh_attention(np64(qk), np64(v), buckets=buckets.cpu().numpy(), n_buckets=8,
                          chunk_len=16, causal=True)
    assert_close(np64(out), ref, dtype, "low-precision output")
