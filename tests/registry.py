"""Undo what a test's plugin registered, so no other test sees an attention it did not load
and a later ``load_plugin`` of the same file registers it again."""

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
