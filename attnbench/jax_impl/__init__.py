"""JAX implementations, mirroring ``torch_impl`` file for file and name for name.

Pure functions over parameter pytrees: ``init_*(key, ...) -> params`` and the apply function
with the same name as the torch module's concept; jit at the call site, with only non-array
settings (specs, flags) static. Parameter pytrees use the torch modules' names and [out, in]
weight layout, so weights convert between frameworks by renaming nothing (``attnbench.convert``).
"""

try:
    import jax  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("attnbench.jax_impl needs JAX: pip install 'attnbench[jax]'") from err
