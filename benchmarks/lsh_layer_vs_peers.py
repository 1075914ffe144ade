"""The public Reformer LSH layers as attnbench variants, to measure ours against them.

A plugin: ``suites/peers.toml`` names this file under ``plugins``, which registers two torch
layer variants. The peers are never attnbench dependencies; install them in a scratch
environment and run the suite from there::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install -c constraints.txt torch==2.13.0 transformers==5.24.0 \
        reformer-pytorch==1.4.4
    /tmp/peers-venv/bin/pip install -c constraints.txt -e '.[jax]'
    /tmp/peers-venv/bin/attnbench run peers && /tmp/peers-venv/bin/attnbench check \
        reports/runs/peers

Peer layers, matched to ours (Q/K shared, V, output projection; no dropout; one chunk looked
back, none ahead; the case's ``causal``):

hf-lsh
    ``transformers``' ``LSHSelfAttention`` followed by ``ReformerSelfOutput`` (its output
    projection, which transformers keeps outside the attention module).
lucidrains-lsh
    ``reformer_pytorch.LSHSelfAttention(dim, heads, bucket_size=chunk_len, n_hashes)``. It
    picks ``n_buckets = length // bucket_size`` itself, so a case must ask for exactly that
    (an error otherwise, never a silent mismatch); it needs the length to be a multiple of
    ``2 * chunk_len``.
"""

from __future__ import annotations

from attnbench.variants import Variant, register_variant


def _wrap(layer, call):
    """An nn.Module whose forward is ``call(layer, x)``, so the harness sees x -> y."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return call(self.layer, x)

    return Wrapped()


def build_hf_lsh(case, *, device, dtype):
    import torch
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import (
        LSHSelfAttention,
        ReformerSelfOutput,
    )

    config = ReformerConfig(
        hidden_size=case.d_model, num_attention_heads=case.n_heads,
        attention_head_size=case.d_model // case.n_heads, lsh_attn_chunk_length=case.chunk_len,
        num_buckets=case.n_buckets, num_hashes=case.n_hashes, lsh_num_chunks_before=1,
        lsh_num_chunks_after=0, is_decoder=case.causal, lsh_attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0)
    layer = torch.nn.ModuleDict({"attention": LSHSelfAttention(config),
                                 "output": ReformerSelfOutput(config)}).to(device, dtype)
    return _wrap(layer, lambda m, x: m["output"](m["attention"](hidden_states=x)[0]))


def build_lucidrains_lsh(case, *, device, dtype):
    from reformer_pytorch import LSHSelfAttention

    if case.length % (2 * case.chunk_len):
        raise ValueError(f"lucidrains-lsh: length={case.length} must be a multiple of "
                         f"2 * chunk_len = {2 * case.chunk_len}")
    if case.n_buckets != case.length // case.chunk_len:
        raise ValueError(f"lucidrains-lsh: n_buckets={case.n_buckets} but reformer-pytorch "
                         f"always uses length // chunk_len = {case.length // case.chunk_len}")
    return LSHSelfAttention(dim=case.d_model, heads=case.n_heads, bucket_size=case.chunk_len,
                            n_hashes=case.n_hashes, causal=case.causal).to(device, dtype)


register_variant(Variant("hf-lsh", "transformers' Reformer LSHSelfAttention + output "
                         "projection (plugin)", "layer", "lsh", frameworks=("torch",),
                         build=build_hf_lsh))
register_variant(Variant("lucidrains-lsh", "reformer-pytorch's LSHSelfAttention (plugin)",
                         "layer", "lsh", frameworks=("torch",), build=build_lucidrains_lsh))
