"""Language models built from a ModelSpec: the Reformer, the Transformer, and every ablation.

tokens -> embedding + positions -> dropout -> stack -> LayerNorm -> head -> float32 logits.
Reversible stack: input (x, x), blocks y1 = x1 + Attn(x2), y2 = x2 + FF(y1), output
LayerNorm(2 * d_model) over concat(y1, y2). Plain stack: pre-norm residual x += Attn(x);
x += FF(x), then LayerNorm(d_model).
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.spec import AttentionSpec, ModelSpec
from attnbench.torch_impl.chunked_ff import FeedForward
from attnbench.torch_impl.common import derive_generator, derive_seed, draw_seeds, dropout
from attnbench.torch_impl.custom_attention import CustomSelfAttention
from attnbench.torch_impl.full_attention import FullSelfAttention, SharedQKSelfAttention
from attnbench.torch_impl.lsh_attention import LSHSelfAttention
from attnbench.torch_impl.reversible import ReversibleBlock, ReversibleSequence

_ATTENTION = {"full": FullSelfAttention, "shared_qk": SharedQKSelfAttention,
              "lsh": LSHSelfAttention, "custom": CustomSelfAttention}
_HASH_STREAM, _DROPOUT_STREAM = 0, 1


def make_attention(d_model: int, spec: AttentionSpec, *, device=None, dtype=None) -> nn.Module:
    """The attention layer of ``spec.kind``."""
    return _ATTENTION[spec.kind](d_model, spec, device=device, dtype=dtype)


class AttentionBlock(nn.Module):
    """LayerNorm -> self-attention -> dropout; hashing and dropout draw from generators derived
    from ``seed``, and ``buckets`` (from an earlier call) replay an LSH layer's hashing (None:
    it hashes afresh)."""

    def __init__(self, d_model: int, spec: AttentionSpec, *, dropout_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, device=device, dtype=dtype)
        self.attention = make_attention(d_model, spec, device=device, dtype=dtype)
        self.dropout_rate = dropout_rate

    def forward(self, x: torch.Tensor, *, seed: int, buckets=None):
        """Returns (output, the buckets used: None for a layer that does not hash)."""
        h = self.norm(x)
        if isinstance(self.attention, SharedQKSelfAttention | CustomSelfAttention):
            h, buckets = self.attention(h, generator=derive_generator(seed, _HASH_STREAM, x.device),
                                        buckets=buckets, return_buckets=True)
        else:
            h, buckets = self.attention(h), None
        rate = self.dropout_rate if self.training else 0.0
        generator = derive_generator(seed, _DROPOUT_STREAM, x.device) if rate else None
        return dropout(h, rate, generator), buckets


class AxialPositionEmbedding(nn.Module):
    """One table per axis of ``shape``; position (i, j, ...) concatenates the axis rows
    (widths ``dims``, summing to d_model), flattened in row-major order."""

    def __init__(self, shape: tuple[int, ...], dims: tuple[int, ...], *, device=None, dtype=None):
        super().__init__()
        self.shape = shape
        self.tables = nn.ParameterList(
            nn.Parameter(torch.randn(n, d, device=device, dtype=dtype))
            for n, d in zip(shape, dims, strict=True))

    def forward(self, length: int) -> torch.Tensor:
        parts = []
        for axis, table in enumerate(self.tables):
            view = [1] * len(self.shape) + [table.shape[-1]]
            view[axis] = self.shape[axis]
            parts.append(table.view(view).expand(*self.shape, table.shape[-1]))
        return torch.cat(parts, -1).reshape(-1, sum(t.shape[-1] for t in self.tables))[:length]


class LanguageModel(nn.Module):
    """A causal or bidirectional LM exactly as ``spec`` says; see the module docstring."""

    def __init__(self, spec: ModelSpec, *, device=None, dtype=None):
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise ValueError(f"spec={spec!r}: must be a ModelSpec")
        self.spec = spec
        factory = {"device": device, "dtype": dtype}
        d = spec.d_model
        self.embed = nn.Embedding(spec.vocab_size, d, **factory)
        if spec.positions == "learned":
            self.positions = nn.Embedding(spec.max_len, d, **factory)
        elif spec.positions == "axial":
            self.positions = AxialPositionEmbedding(spec.axial_shape, spec.axial_dims, **factory)
        else:
            self.positions = None
        blocks = [
            ReversibleBlock(
                AttentionBlock(d, spec.attention, dropout_rate=spec.dropout, **factory),
                FeedForward(d, spec.feed_forward, dropout_rate=spec.dropout, **factory))
            for _ in range(spec.n_layers)
        ]
        self.stack = ReversibleSequence(blocks)
        width = 2 * d if spec.reversible else d
        self.norm = nn.LayerNorm(width, **factory)
        self.head = nn.Linear(width, spec.vocab_size, **factory)
        if spec.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None,
                buckets: list | None = None) -> torch.Tensor:
        """tokens [batch, length] (int) -> logits [batch, length, vocab] in float32.

        All randomness (LSH rotations, dropout) comes from seeds drawn from ``generator`` (the
        global CPU RNG when None, drawn from and never reseeded). ``buckets`` (one entry per
        layer) replays given buckets instead of hashing, which cross-framework comparisons use;
        a None entry hashes afresh (and non-LSH layers ignore theirs).
        """
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens: must be an integer tensor [batch, length], got "
                             f"{tokens.dtype} {tuple(tokens.shape)}")
        self.spec.check_length(tokens.shape[1])
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.spec.vocab_size):
            raise ValueError(f"tokens: ids must lie in [0, vocab_size={self.spec.vocab_size})")
        given = [None] * self.spec.n_layers if buckets is None else list(buckets)
        if len(given) != self.spec.n_layers:
            raise ValueError(f"len(buckets)={len(given)}: must equal ModelSpec.n_layers="
                             f"{self.spec.n_layers}; give None for a layer that hashes afresh")
        seeds = draw_seeds(self.spec.n_layers + 1, generator)
        x = self.embed(tokens)
        if isinstance(self.positions, nn.Embedding):
            x = x + self.positions(torch.arange(tokens.shape[1], device=tokens.device))
        elif self.positions is not None:
            x = x + self.positions(tokens.shape[1])
        rate = self.spec.dropout if self.training else 0.0
        x = dropout(x, rate, derive_generator(seeds[-1], 0, x.device) if rate else None)
        layer_seeds = seeds[:-1]
        if self.spec.reversible:
            y1, y2 = self.stack(x, x, seeds=layer_seeds, buckets=given)
            x = torch.cat([y1, y2], dim=-1)
        else:
            for block, seed, replay in zip(self.stack.blocks, layer_seeds, given, strict=True):
                x = x + block.f(x, seed=derive_seed(seed, 0), buckets=replay)[0]
                x = x + block.g(x, seed=derive_seed(seed, 1))
        return self.head(self.norm(x)).float()


class ReformerLM(LanguageModel):
    """The Reformer by default (:meth:`ModelSpec.reformer`); any ModelSpec is accepted."""

    def __init__(self, spec: ModelSpec | None = None, *, device=None, dtype=None):
        super().__init__(ModelSpec.reformer() if spec is None else spec, device=device,
                         dtype=dtype)


class TransformerLM(LanguageModel):
    """The full-attention baseline by default (:meth:`ModelSpec.transformer`)."""

    def __init__(self, spec: ModelSpec | None = None, *, device=None, dtype=None):
        super().__init__(ModelSpec.transformer() if spec is None else spec, device=device,
                         dtype=dtype)
