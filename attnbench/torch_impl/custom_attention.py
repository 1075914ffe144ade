"""A registered attention function (:func:`attnbench.variants.register_attention`) as a
self-attention layer, with the same projections around it as the built-in layers, so times
compare. Mirrors :mod:`attnbench.jax_impl.custom_attention`.

Where it shares the query-key projection (:func:`~attnbench.variants.shares_qk`: as the
attention was registered, or always in a task's models) the layer has the Reformer's ``w_qk``
(and ``k = q`` is passed), otherwise separate ``w_q``, ``w_k``; both have ``w_v`` and ``w_out``.
The function's output is checked against the contract (shaped, typed and placed like ``v``):
anything else is an :class:`~attnbench.variants.AttentionContractError` naming the attention
and what it returned.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.spec import AttentionSpec
from attnbench.torch_impl.full_attention import _SelfAttentionBase
from attnbench.variants import case_keywords, check_attention_output, get_attention, shares_qk

FRAMEWORK = "torch"


def attend(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
           generator: torch.Generator | None) -> torch.Tensor:
    """The registered function on [batch, heads, length, d] tensors, its output checked."""
    attention = get_attention(spec.custom)
    fn = attention.function(FRAMEWORK)
    out = fn(q, k, v, causal=spec.causal, generator=generator, **case_keywords(fn, spec))
    check_attention_output(attention.name, out, v)
    return out


class CustomSelfAttention(_SelfAttentionBase):
    """Projections, the registered function per head, the output projection."""

    def __init__(self, d_model: int, spec: AttentionSpec, *, device=None, dtype=None):
        super().__init__(d_model, spec, device=device, dtype=dtype)
        if spec.kind != "custom":
            raise ValueError(f"AttentionSpec.kind={spec.kind!r}: CustomSelfAttention needs "
                             "'custom'")
        self.attention = get_attention(spec.custom)
        self.attention.function(FRAMEWORK)  # refuse a framework it lacks when built
        factory = {"device": device, "dtype": dtype}
        self.shared_qk = shares_qk(spec)
        names = ("w_qk", "w_v") if self.shared_qk else ("w_q", "w_k", "w_v")
        for name in names:
            setattr(self, name, nn.Linear(d_model, d_model, bias=False, **factory))

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
                buckets=None, return_buckets: bool = False):
        """x [batch, length, d_model] -> same; ``generator`` is the function's only source of
        randomness (a model derives it from the block's seed, so a reversible stack replays
        it); ``buckets`` is accepted for the uniform layer interface and unused."""
        self._check_input(x)
        if self.shared_qk:
            q = k = self._split_heads(self.w_qk(x))
        else:
            q, k = self._split_heads(self.w_q(x)), self._split_heads(self.w_k(x))
        out = attend(self.spec, q, k, self._split_heads(self.w_v(x)), generator=generator)
        out = self.w_out(self._merge_heads(out))
        return (out, None) if return_buckets else out
