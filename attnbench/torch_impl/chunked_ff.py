"""Pre-norm position-wise feed-forward whose forward *and* backward run chunk by chunk.

Each chunk of positions runs under non-reentrant activation checkpointing, so the forward keeps
only the chunk inputs and the backward recomputes one chunk at a time: the [L, d_ff] hidden
activation never exists whole. Dropout masks come from a generator derived from (seed, chunk),
so the recompute replays them exactly without touching the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnbench.spec import FeedForwardSpec
from attnbench.torch_impl.common import derive_generator, dropout

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """LayerNorm -> Linear(d_model, d_ff) -> activation -> dropout -> Linear(d_ff, d_model)
    -> dropout, over ``spec.chunk_len`` positions at a time (all at once when None)."""

    def __init__(self, d_model: int, spec: FeedForwardSpec, *, dropout_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.spec = spec
        self.dropout_rate = dropout_rate
        self.norm = nn.LayerNorm(d_model, **factory)
        self.w1 = nn.Linear(d_model, spec.d_ff, **factory)
        self.w2 = nn.Linear(spec.d_ff, d_model, **factory)
        self.activation = _ACTIVATIONS[spec.activation]

    def _chunk(self, x: torch.Tensor, seed: int | None, index: int) -> torch.Tensor:
        rate = self.dropout_rate if self.training else 0.0
        generator = None
        if rate > 0.0:
            if seed is None:
                raise ValueError("FeedForward with dropout > 0 in training needs a seed")
            generator = derive_generator(seed, index, x.device)
        hidden = dropout(self.activation(self.w1(self.norm(x))), rate, generator)
        return dropout(self.w2(hidden), rate, generator)

    def forward(self, x: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """x [batch, length, d_model] -> [batch, length, d_model]."""
        chunk_len = self.spec.chunk_len
        if chunk_len is None or chunk_len >= x.shape[1]:
            return self._chunk(x, seed, 0)
        pieces = x.split(chunk_len, dim=1)
        if not torch.is_grad_enabled():
            return torch.cat([self._chunk(p, seed, i) for i, p in enumerate(pieces)], dim=1)
        return torch.cat([
            checkpoint(self._chunk, p, seed, i, use_reentrant=False, preserve_rng_state=False)
            for i, p in enumerate(pieces)
        ], dim=1)
