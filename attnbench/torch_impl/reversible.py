"""The reversible residual stack (RevNet): activations are reconstructed, not stored.

Block: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``. The autograd function saves only the stack's
outputs and each LSH layer's int32 buckets; the backward walks the blocks in reverse,
reconstructing ``x2 = y2 - G(y1)`` and ``x1 = y1 - F(x2)`` and taking vector-Jacobian products
of the recomputed sublayers. Randomness is replayed exactly: F and G get per-layer seeds from
which every generator is derived, and F reuses the forward's buckets. The parameters are inputs
of the function, so ``torch.autograd.grad`` w.r.t. parameters works and parameters train even
when the stack's input does not require grad. Replay buckets are given per layer, as in JAX: a
layer given None hashes afresh from its seed (exactly as with no buckets at all), a layer given
a tensor replays it; any mix is allowed.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.torch_impl.common import derive_seed


class ReversibleBlock(nn.Module):
    """One RevNet block of two sublayers.

    f(x, *, seed, buckets) -> (y, buckets or None): attention, which may hash;
    g(x, *, seed) -> y: the feed-forward.
    """

    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x1, x2, *, seed: int, buckets=None):
        """Plain (autograd) forward: returns (y1, y2, buckets)."""
        f_out, buckets = self.f(x2, seed=derive_seed(seed, 0), buckets=buckets)
        y1 = x1 + f_out
        return y1, x2 + self.g(y1, seed=derive_seed(seed, 1)), buckets

    def backward_step(self, y1, y2, d_y1, d_y2, *, seed: int, buckets):
        """Reconstruct (x1, x2) from (y1, y2) and return them with their gradients and the
        gradients of this block's trainable parameters (in ``trainable()`` order)."""
        g_params = [p for p in self.g.parameters() if p.requires_grad]
        f_params = [p for p in self.f.parameters() if p.requires_grad]
        with torch.enable_grad():
            y1_leaf = y1.detach().requires_grad_(True)
            g_out = self.g(y1_leaf, seed=derive_seed(seed, 1))
            d_y1_g, *d_g = torch.autograd.grad(g_out, [y1_leaf, *g_params], d_y2,
                                               allow_unused=True)
        with torch.no_grad():
            x2 = y2 - g_out
            d_y1 = d_y1 + d_y1_g
        del g_out
        with torch.enable_grad():
            x2_leaf = x2.detach().requires_grad_(True)
            f_out, _ = self.f(x2_leaf, seed=derive_seed(seed, 0), buckets=buckets)
            d_x2_f, *d_f = torch.autograd.grad(f_out, [x2_leaf, *f_params], d_y1,
                                               allow_unused=True)
        with torch.no_grad():
            x1 = y1 - f_out
            d_x2 = d_y2 + d_x2_f
        return x1, x2, d_y1, d_x2, d_f + d_g

    def trainable(self) -> list[nn.Parameter]:
        return ([p for p in self.f.parameters() if p.requires_grad]
                + [p for p in self.g.parameters() if p.requires_grad])


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, blocks, seeds, given, *params):
        buckets = []
        with torch.no_grad():
            for block, seed, replay in zip(blocks, seeds, given, strict=True):
                x1, x2, layer_buckets = block(x1, x2, seed=seed, buckets=replay)
                buckets.append(layer_buckets)
        hashed = [b for b in buckets if b is not None]
        ctx.save_for_backward(x1, x2, *hashed)
        ctx.blocks, ctx.seeds = blocks, seeds
        ctx.has_buckets = [b is not None for b in buckets]
        return x1, x2

    @staticmethod
    def backward(ctx, d_y1, d_y2):
        y1, y2, *hashed = ctx.saved_tensors
        hashed = iter(hashed)
        buckets = [next(hashed) if has else None for has in ctx.has_buckets]
        grads = []
        layers = list(zip(ctx.blocks, ctx.seeds, buckets, strict=True))
        for block, seed, layer_buckets in reversed(layers):
            y1, y2, d_y1, d_y2, block_grads = block.backward_step(
                y1, y2, d_y1, d_y2, seed=seed, buckets=layer_buckets)
            grads = block_grads + grads
        return (d_y1, d_y2, None, None, None, *grads)


class ReversibleSequence(nn.Module):
    """A stack of reversible blocks. ``reversible=False`` runs the same blocks with ordinary
    autograd (every activation stored): same function, same randomness, the memory baseline."""

    def __init__(self, blocks: list[ReversibleBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.reversible = True  # False: the ordinary-autograd baseline (tests, memory ablation)

    def forward(self, x1, x2, *, seeds: list[int], buckets: list | None = None,
                reversible: bool | None = None):
        """``seeds``: one per block; ``buckets``: optional buckets to replay, one entry per
        block: a tensor replays, None hashes afresh from the block's seed as if no buckets were
        given, in any mix."""
        reversible = self.reversible if reversible is None else reversible
        given = [None] * len(self.blocks) if buckets is None else list(buckets)
        if len(seeds) != len(self.blocks):
            raise ValueError(f"len(seeds)={len(seeds)}: must equal the number of blocks "
                             f"({len(self.blocks)})")
        if len(given) != len(self.blocks):
            raise ValueError(f"len(buckets)={len(given)}: must equal the number of blocks "
                             f"({len(self.blocks)}); give None for a block that hashes afresh")
        if not reversible:
            for block, seed, replay in zip(self.blocks, seeds, given, strict=True):
                x1, x2, _ = block(x1, x2, seed=seed, buckets=replay)
            return x1, x2
        params = [p for block in self.blocks for p in block.trainable()]
        return _ReversibleFunction.apply(x1, x2, list(self.blocks), list(seeds), given, *params)
