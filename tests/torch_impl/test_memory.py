"""Memory, measured deterministically: bytes autograd saves for the backward (CPU)."""

import torch

from attnbench.spec import FeedForwardSpec
from attnbench.torch_impl.chunked_ff import FeedForward
from attnbench.torch_impl.full_attention import full_attention
from attnbench.torch_impl.lsh_attention import lsh_attention
from tests.torch_impl.helpers import SavedBytes
from tests.torch_impl.test_reversible import make_lsh_stack


def stack_saved_bytes(n_layers, reversible):
    stack = make_lsh_stack(n_layers, d_model=128, dropout=0.1, dtype=torch.float32)
    x = torch.randn(1, 256, 128, requires_grad=True)
    with SavedBytes() as saved:
        stack(x, x, seeds=list(range(n_layers)), reversible=reversible)
    return saved.total


def test_reversible_stack_memory_is_flat_in_depth_and_plain_stack_is_linear():
    rev_1, rev_12 = stack_saved_bytes(1, True), stack_saved_bytes(12, True)
    plain_1, plain_12 = stack_saved_bytes(1, False), stack_saved_bytes(12, False)
    # Reversible keeps the outputs plus each layer's int32 buckets (small, O(L) per layer).
    assert rev_12 <= 1.5 * rev_1, f"reversible: 12 layers save {rev_12} B vs {rev_1} B for 1"
    assert plain_12 >= 10 * plain_1, f"plain: 12 layers save {plain_12} B vs {plain_1} B for 1"
    assert rev_1 < plain_1 / 4


def test_chunked_feed_forward_saves_a_fraction_of_the_unchunked_bytes():
    x = torch.randn(1, 1024, 64, requires_grad=True)
    saved = {}
    for chunk_len in (None, 64):
        ff = FeedForward(64, FeedForwardSpec(d_ff=256, chunk_len=chunk_len))
        with SavedBytes() as counter:
            ff(x)
        saved[chunk_len] = counter.total
    assert saved[64] <= 0.2 * saved[None], saved


def test_lsh_saved_bytes_grow_linearly_and_naive_full_quadratically():
    lsh, full = {}, {}
    for length in (512, 1024, 2048):
        qk = torch.randn(1, 2, length, 32, requires_grad=True)
        v = torch.randn(1, 2, length, 32, requires_grad=True)
        with SavedBytes() as counter:
            lsh_attention(qk, v, n_buckets=2 * length // 64, n_hashes=2, chunk_len=64,
                          causal=True, generator=torch.Generator().manual_seed(0))
        lsh[length] = counter.total
        with SavedBytes() as counter:
            full_attention(qk, qk, v, causal=True, impl="naive")
        full[length] = counter.total
    for small, large in ((512, 1024), (1024, 2048)):
        assert 1.8 <= lsh[large] / lsh[small] <= 2.2, lsh
        assert 3.6 <= full[large] / full[small] <= 4.4, full
