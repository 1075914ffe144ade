"""PyTorch implementations: full attention baselines and the complete Reformer.

One concept per module: ``full_attention``, ``lsh_attention``, ``chunked_ff``, ``reversible``,
``model``; ``jax_impl`` mirrors them file for file.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "attnbench.torch_impl needs PyTorch: pip install 'attnbench[torch]'"
    ) from err
