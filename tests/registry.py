"""A user's attention plugin for tests, and undoing what a test's plugin registered, so no
other test sees an attention it did not load and a later ``load_plugin`` of the same file
registers it again."""

from __future__ import annotations

import sys

from attnbench import variants


def forget_attentions(*names: str) -> None:
    """Drop each registered attention, its variant, and the plugin module that registered it
    (``load_plugin`` skips a module already imported)."""
    for name in names:
        attention = variants.ATTENTIONS.pop(name, None)
        variants.VARIANTS.pop(name, None)
        for fn in (attention.torch, attention.jax) if attention else ():
            module = getattr(fn, "__module__", None) or ""
            if module.startswith("_attnbench_plugin_"):
                sys.modules.pop(module, None)


PLUGIN = '''
"""A user's attention, outside the repository: exact softmax attention, written by hand,
plus three that break the contract."""
import math

from attnbench.variants import register_attention


def mine_torch(q, k, v, *, causal, generator=None):
    import torch
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -1e9)
    return torch.softmax(logits, -1) @ v


def mine_jax(q, k, v, *, causal, key=None):
    import jax
    import jax.numpy as jnp
    logits = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        logits = jnp.where(jnp.triu(jnp.ones((n, n), bool), 1), -1e9, logits)
    return jax.nn.softmax(logits, -1) @ v


register_attention("mine", summary="exact attention by hand (test plugin)", torch=mine_torch,
                   jax=mine_jax)
register_attention("wrong-shape", summary="returns q[..., :1]",
                   torch=lambda q, k, v, *, causal, generator=None: v[..., :1],
                   jax=lambda q, k, v, *, causal, key=None: v[..., :1])
register_attention("wrong-dtype", summary="returns float64",
                   torch=lambda q, k, v, *, causal, generator=None: v.double())
def _raises(q, k, v, *, causal, generator=None):
    raise RuntimeError("my attention is broken")
register_attention("raises", summary="raises", torch=_raises)
'''

USER_ATTENTIONS = ("mine", "wrong-shape", "wrong-dtype", "raises")
