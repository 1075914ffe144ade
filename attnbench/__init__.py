"""attnbench: benchmark attention variants (Reformer LSH, reversible, chunked FF vs full attention).

Importing the package is light: neither torch nor jax is imported until an implementation module
(``attnbench.torch_impl``, ``attnbench.jax_impl``) is.
"""

from attnbench.spec import AttentionSpec, FeedForwardSpec, ModelSpec

__all__ = ["AttentionSpec", "FeedForwardSpec", "ModelSpec", "__version__"]
__version__ = "0.1.0"
