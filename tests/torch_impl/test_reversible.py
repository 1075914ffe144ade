import pytest
import torch
from torch import nn

from attnbench import reference as R
from attnbench.spec import AttentionSpec, FeedForwardSpec
from attnbench.torch_impl.chunked_ff import FeedForward
from attnbench.torch_impl.model import AttentionBlock
from attnbench.torch_impl.reversible import ReversibleBlock, ReversibleSequence
from tests.tolerances import assert_close
from tests.torch_impl.helpers import ff_params_numpy


class FeedForwardAsF(nn.Module):
    """A feed-forward with the attention sublayer's interface, so the block is comparable with
    the reference using feed-forwards for both F and G."""

    def __init__(self, ff):
        super().__init__()
        self.ff = ff

    def forward(self, x, *, seed, buckets=None):
        return self.ff(x, seed=seed), None


def make_lsh_stack(n_layers, d_model=16, dropout=0.2, dtype=torch.float64, device="cpu"):
    torch.manual_seed(0)
    attn = AttentionSpec(kind="lsh", n_heads=2, causal=True, n_hashes=2, chunk_len=8)
    ff = FeedForwardSpec(d_ff=32, chunk_len=16)
    return ReversibleSequence([
        ReversibleBlock(AttentionBlock(d_model, attn, dropout_rate=dropout, device=device,
                                       dtype=dtype),
                        FeedForward(d_model, ff, dropout_rate=dropout, device=device,
                                    dtype=dtype))
        for _ in range(n_layers)
    ]).train()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_block_matches_reference_forward_inverse_and_vjp(rng, device, dtype):
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(1)
    f = FeedForward(6, FeedForwardSpec(d_ff=12, activation="gelu"), device=device,
                    dtype=torch_dtype)
    g = FeedForward(6, FeedForwardSpec(d_ff=12, activation="relu", chunk_len=4), device=device,
                    dtype=torch_dtype)
    stack = ReversibleSequence([ReversibleBlock(FeedForwardAsF(f), g)])
    x1, x2 = (torch.tensor(rng.standard_normal((2, 8, 6)), dtype=torch_dtype, device=device,
                           requires_grad=True) for _ in range(2))
    y1, y2 = stack(x1, x2, seeds=[0])
    d_y1, d_y2 = (torch.tensor(rng.standard_normal((2, 8, 6)), dtype=torch_dtype,
                               device=device) for _ in range(2))
    torch.autograd.backward([y1, y2], [d_y1, d_y2])

    pf, pg = ff_params_numpy(f), ff_params_numpy(g)

    def ref_f(x):
        return R.feed_forward(x, pf, activation="gelu")

    def ref_g(x):
        return R.feed_forward(x, pg, activation="relu")

    def np64(t):
        return t.detach().cpu().double().numpy()

    r1, r2 = R.reversible_block_forward(np64(x1), np64(x2), ref_f, ref_g)
    assert_close(np64(y1), r1, dtype, "y1")
    assert_close(np64(y2), r2, dtype, "y2")
    _, _, d_x1, d_x2, d_f, d_g = R.reversible_block_vjp(
        r1, r2, np64(d_y1), np64(d_y2),
        lambda x, d: R.feed_forward_vjp(x, pf, d, activation="gelu"),
        lambda x, d: R.feed_forward_vjp(x, pg, d, activation="relu"), ref_f, ref_g)
    assert_close(np64(x1.grad), d_x1, dtype, "d_x1")
    assert_close(np64(x2.grad), d_x2, dtype, "d_x2")
    assert_close(np64(f.w1.weight.grad).T, d_f["w1"], dtype, "d_F.w1")
    assert_close(np64(g.norm.weight.grad), d_g["ln_gamma"], dtype, "d_G.ln_gamma")


def test_inverse_reconstructs_the_inputs(rng):
    stack = make_lsh_stack(1)
    block = stack.blocks[0]
    x1, x2 = (torch.tensor(rng.standard_normal((1, 32, 16))) for _ in range(2))
    with torch.no_grad():
        y1, y2, buckets = block(x1, x2, seed=5)
    zeros = torch.zeros_like(y1)
    r1, r2, *_ = block.backward_step(y1, y2, zeros, zeros, seed=5, buckets=buckets)
    torch.testing.assert_close(r1, x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(r2, x2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("input_requires_grad", [True, False], ids=["x-grad", "x-no-grad"])
@pytest.mark.parametrize("api", ["backward", "autograd.grad"])
def test_reversible_gradients_equal_plain_stack_with_dropout(rng, input_requires_grad, api):
    """Dropout 0.2 and LSH hashing: only an exact replay of both gives equal gradients."""
    stack = make_lsh_stack(3)
    x = torch.tensor(rng.standard_normal((2, 32, 16)), requires_grad=input_requires_grad)
    params = list(stack.parameters())
    d_out = torch.tensor(rng.standard_normal((2, 32, 32)))
    seeds = [11, 12, 13]

    def grads(reversible):
        y = torch.cat(stack(x, x, seeds=seeds, reversible=reversible), -1)
        wrt = ([x] if input_requires_grad else []) + params
        if api == "autograd.grad":
            return y, torch.autograd.grad(y, wrt, d_out)
        for t in wrt:
            t.grad = None
        y.backward(d_out)
        return y, [t.grad.clone() for t in wrt]

    y_rev, g_rev = grads(True)
    y_plain, g_plain = grads(False)
    torch.testing.assert_close(y_rev, y_plain, rtol=0, atol=1e-12)
    assert len(g_rev) == len(g_plain) > 0
    for a, b in zip(g_rev, g_plain, strict=True):
        assert a is not None
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_global_rng_is_never_reseeded():
    stack = make_lsh_stack(2)
    x = torch.randn(1, 32, 16, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    torch.cat(stack(x, x, seeds=[1, 2]), -1).sum().backward()
    assert torch.equal(torch.get_rng_state(), before)


def test_seed_count_must_match_depth():
    stack = make_lsh_stack(2)
    x = torch.randn(1, 32, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"len\(seeds\)=1: must equal the number of blocks \(2\)"):
        stack(x, x, seeds=[1])


def own_buckets(stack, x, seeds):
    """The buckets each layer hashes for itself (no replay), block by block."""
    own, x1, x2 = [], x, x
    with torch.no_grad():
        for block, seed in zip(stack.blocks, seeds, strict=True):
            x1, x2, used = block(x1, x2, seed=seed)
            own.append(used)
    return own


def test_mixed_bucket_list_replays_tensors_and_hashes_none_entries(rng):
    """A None entry hashes afresh from its layer's seed, a tensor replays, in any mix (the JAX
    stack's semantics too): replaying layers' own buckets around None entries changes nothing,
    and other buckets for one layer give the plain stack's values and gradients."""
    stack = make_lsh_stack(3)
    x = torch.tensor(rng.standard_normal((2, 32, 16)), requires_grad=True)
    seeds = [11, 12, 13]
    own = own_buckets(stack, x, seeds)
    with torch.no_grad():
        fresh = torch.cat(stack(x, x, seeds=seeds), -1)
        for given in ([own[0], None, own[2]], [None, own[1], None]):
            torch.testing.assert_close(torch.cat(stack(x, x, seeds=seeds, buckets=given), -1),
                                       fresh, rtol=0, atol=1e-12)
    given = [None, torch.randint(0, 8, own[1].shape, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.int32), None]
    d_out = torch.tensor(rng.standard_normal((2, 32, 32)))
    wrt = [x, *stack.parameters()]

    def value_and_grads(reversible):
        y = torch.cat(stack(x, x, seeds=seeds, buckets=given, reversible=reversible), -1)
        return y, torch.autograd.grad(y, wrt, d_out)

    (y_rev, g_rev), (y_plain, g_plain) = value_and_grads(True), value_and_grads(False)
    assert (y_rev - fresh).abs().max() > 1e-3  # the given buckets were replayed
    torch.testing.assert_close(y_rev, y_plain, rtol=0, atol=1e-12)
    for a, b in zip(g_rev, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bucket_count_must_match_depth():
    stack = make_lsh_stack(2)
    x = torch.randn(1, 32, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"len\(buckets\)=1: must equal the number of blocks "
                                         r"\(2\); give None for a block that hashes afresh"):
        stack(x, x, seeds=[1, 2], buckets=[None])


def test_a_layer_that_does_not_hash_returns_no_buckets(rng):
    """Full attention ignores given buckets and reports none used (as JAX's attention_block),
    so a mixed bucket list means the same for every attention kind."""
    block = AttentionBlock(16, AttentionSpec(kind="full", n_heads=2, causal=True),
                           dtype=torch.float64)
    x = torch.tensor(rng.standard_normal((1, 32, 16)))
    given = torch.zeros(1, 2, 1, 32, dtype=torch.int32)
    out, used = block(x, seed=0, buckets=given)
    assert used is None
    torch.testing.assert_close(out, block(x, seed=0)[0], rtol=0, atol=0)
