"""Synthetic tasks and the settings of the accuracy measurements, shared by both frameworks.

Everything here is NumPy and the standard library only: the data generators (``data``), the
frozen task settings and their presets (``config``), the inputs of the approximation
measurement (``approx_inputs``), framework-neutral checkpoints (``checkpoint``) and the
confidence intervals over seeds (``stats``). Training and evaluation live per framework in
``torch_impl/train.py`` and ``jax_impl/train.py``; they read their batches from here, so both
frameworks see identical data for a given seed.
"""
