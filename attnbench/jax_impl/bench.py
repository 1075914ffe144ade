"""What the harness times in JAX: one step of a variant at one case.

``make_step(case, variant)`` builds parameters and inputs, lowers and compiles the step ahead
of time (``lower_s`` and ``compile_s`` are recorded apart from every timed call) and returns a
:class:`Step`: a zero-argument ``run`` that calls the compiled step once and waits with
``jax.block_until_ready`` on its whole output, the memory meter for this device, and facts
about where it ran, including XLA's compiled memory analysis. The step of each mode:

- ``forward``: one forward pass (inference);
- ``forward-backward``: layers, the gradient of the output's sum with respect to the input
  and the weights; models, the gradient of the next-token cross-entropy;
- ``train-step``: forward, backward and an ``optax.adam`` update.

Each call gets a fresh PRNG key, fold_in(seed key, call number), derived inside the compiled step
(LSH draws fresh rotations each step, as in torch), so a step can be called any number of times.
Mirrors :mod:`attnbench.torch_impl.bench`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from attnbench.jax_impl.common import resolve_device
from attnbench.jax_impl.custom_attention import custom_self_attention, init_custom_self_attention
from attnbench.jax_impl.full_attention import (
    full_self_attention,
    fused_kernel,
    init_full_self_attention,
    init_shared_qk_self_attention,
    shared_qk_self_attention,
)
from attnbench.jax_impl.lsh_attention import init_lsh_self_attention, lsh_self_attention
from attnbench.jax_impl.model import init_language_model, language_model
from attnbench.measure.memory import MB, CpuMemory, JaxDeviceMemory
from attnbench.variants import Variant, attention_kind, attention_spec, model_spec

LEARNING_RATE = 1e-4
_LAYERS = {"full": (init_full_self_attention, full_self_attention),
           "shared_qk": (init_shared_qk_self_attention, shared_qk_self_attention),
           "lsh": (init_lsh_self_attention, lsh_self_attention),
           "custom": (init_custom_self_attention, custom_self_attention)}


@dataclass
class Step:
    run: Callable[[], None]
    memory: object
    info: dict = field(default_factory=dict)


def language_model_loss(logits, tokens):
    """Next-token cross-entropy: position t predicts token t + 1."""
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def make_step(case, variant: Variant) -> Step:
    device = resolve_device(case.device)
    dtype = jnp.dtype(case.dtype)
    data = np.random.default_rng(case.seed)
    with jax.default_device(device):  # parameters are initialised by one jitted call
        param_key = jax.random.key(case.seed)
        if variant.kind == "layer":
            spec = attention_spec(variant, case)
            init, apply = _LAYERS[spec.kind]
            params = jax.jit(lambda k: init(k, case.d_model, spec, dtype))(param_key)
            x = data.standard_normal((case.batch, case.length, case.d_model), np.float32)
            inputs = jnp.asarray(x, dtype)

            def objective(params, inputs, key):
                return jnp.sum(apply(params, inputs, spec=spec, key=key).astype(jnp.float32))
        else:
            spec = model_spec(variant, case)
            params = jax.jit(lambda k: init_language_model(k, spec, dtype))(param_key)
            tokens = data.integers(0, case.vocab_size, (case.batch, case.length))
            inputs = jnp.asarray(tokens, jnp.int32)

            train = case.mode != "forward"

            def objective(params, inputs, key):
                logits = language_model(params, inputs, spec=spec, key=key, train=train)
                return language_model_loss(logits, inputs)

        base_key = jax.random.key(case.seed + 1)
    params, inputs, base_key = jax.device_put((params, inputs, base_key), device)

    state: tuple = ()
    if case.mode == "forward":
        def fn(params, inputs, key):
            return objective(params, inputs, key)
        args = (params, inputs)
    elif case.mode == "forward-backward":
        argnums = (0, 1) if variant.kind == "layer" else 0
        fn = jax.grad(objective, argnums=argnums)
        args = (params, inputs)
    elif case.mode == "train-step":
        import optax

        optimizer = optax.adam(LEARNING_RATE)
        state = (optimizer.init(params),)

        def fn(params, opt_state, inputs, key):
            grads = jax.grad(objective)(params, inputs, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        args = (params, state[0], inputs)
    else:
        raise ValueError(f"mode={case.mode!r}: not a timed mode")

    def keyed(*step_args):
        """The step with call number ``index`` as its last argument: its key is
        fold_in(base key, index), so any number of calls gets fresh, reproducible keys."""
        *rest, index = step_args
        return fn(*rest, jax.random.fold_in(base_key, index))

    t0 = time.perf_counter()
    lowered = jax.jit(keyed).lower(*args, np.int32(0))
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    calls = itertools.count()

    def next_key():
        return np.int32(next(calls))

    if case.mode == "train-step":
        carry = {"params": params, "opt": state[0]}

        def run() -> None:
            carry["params"], carry["opt"] = jax.block_until_ready(
                compiled(carry["params"], carry["opt"], inputs, next_key()))
    else:
        def run() -> None:
            jax.block_until_ready(compiled(*args, next_key()))

    memory = CpuMemory() if device.platform == "cpu" else JaxDeviceMemory(device)
    kind = attention_kind(variant, case)
    hashed = kind == "lsh"
    info = {
        "platform": device.platform,
        "device_name": device.device_kind,
        "threads_used": len(os.sched_getaffinity(0)) if device.platform == "cpu" else None,
        "framework_version": jax.__version__,
        "n_params": int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))),
        "kernel": case.resolved_kernel if hashed else None,  # the LSH kernel that ran
        "kernel_precision": kernel_precision(case) if hashed else None,
        "full_attention_kernel": (fused_kernel(dtype, device.platform)
                                  if kind == "full" and variant.impl == "fused"
                                  else None),
        # GPU repeats run back to back: the L2 cache is warm (not flushed between calls)
        "l2_cache": "warm" if device.platform != "cpu" else None,
        "lower_s": lower_s,
        "compile_s": compile_s,
        **_memory_analysis(compiled),
    }
    return Step(run, memory, info)


def _memory_analysis(compiled) -> dict:
    """XLA's planned buffer sizes for the compiled step (None where not reported)."""
    try:
        analysis = compiled.memory_analysis()
        return {"xla_temp_mb": analysis.temp_size_in_bytes / MB,
                "xla_argument_mb": analysis.argument_size_in_bytes / MB,
                "xla_output_mb": analysis.output_size_in_bytes / MB}
    except Exception:  # noqa: BLE001 - not every backend or version reports it
        return {"xla_temp_mb": None, "xla_argument_mb": None, "xla_output_mb": None}


def kernel_precision(case) -> str:
    """How the LSH band's products are computed: the fused kernel's route (3xTF32 for float32)
    or, on the portable core, the dtype's own matmuls (float32 at ``Precision.HIGHEST``)."""
    if case.resolved_kernel == "pallas":
        from attnbench.jax_impl import lsh_pallas

        return lsh_pallas.precision(case.dtype)
    return case.dtype
