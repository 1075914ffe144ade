"""The fused GPU kernels compiled for a GPU on any machine: registers, spills, shared memory.

``attnbench kernels`` (``command.py``) compiles every pass of torch's Triton kernels and JAX's
Pallas kernels (``compile.py``, run in a child process per framework) for a CUDA target, over
the configurations the shipped GPU suites run or the whole range the kernels accept
(``configs.py``), and reads each cubin's resources with the ``cuobjdump`` that Triton's wheel
carries. No GPU or driver is needed.
"""
