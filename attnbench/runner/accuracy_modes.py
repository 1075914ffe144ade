"""The untimed modes: ``approx`` (LSH approximation quality) and ``task`` (train on a
synthetic task, evaluate under several attention configurations). The worker calls
:func:`measure`; the metrics go into the same store as time and memory.

Options (the case's ``options`` table):

- approx: ``inputs`` (random | clustered | trained; default random), ``n_clusters``
  (default 8), ``n_seeds`` (default 5).
- task: see :func:`task_config`.
"""

from __future__ import annotations

import os
from pathlib import Path

from attnbench.variants import ATTENTIONS, Variant, attention_spec, case_rule_problem

APPROX_OPTIONS = {"inputs": "random", "n_clusters": 8, "n_seeds": 5}


def _framework_module(case, name: str):
    import importlib

    package = "attnbench.jax_impl" if case.framework == "jax" else "attnbench.torch_impl"
    return importlib.import_module(f"{package}.{name}")


def _options(case, defaults: dict) -> dict:
    unknown = sorted(set(case.options) - set(defaults))
    if unknown:
        raise ValueError(f"options: unknown key(s) {unknown} for mode {case.mode!r} "
                         f"(known: {', '.join(defaults)})")
    return {**defaults, **case.options}


APPROX_INPUTS = ("random", "clustered", "trained")


def check_options(case, variant: Variant) -> None:
    """Refuse options a case's mode does not take, before anything runs (an unknown key would
    change the case id and measure nothing different; a bad value would fail only in the
    worker). Raises ``ValueError`` naming the option and the rule."""
    if case.mode == "approx":
        opts = _options(case, APPROX_OPTIONS)
        if opts["inputs"] not in APPROX_INPUTS:
            raise ValueError(f"options.inputs={opts['inputs']!r}: must be one of "
                             f"{', '.join(APPROX_INPUTS)}")
        for name in ("n_clusters", "n_seeds"):
            value = opts[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"options.{name}={value!r}: must be an integer >= 1")
    elif case.mode == "task":
        config = task_config(case, variant)  # TaskConfig validates every field
        for name in config.eval_attentions:  # the trained one is the case's, checked with it
            if name in ATTENTIONS and case.framework not in ATTENTIONS[name].frameworks:
                raise ValueError(f"options.eval_attentions: attention {name!r} has no "
                                 f"{case.framework} function (it has "
                                 f"{', '.join(ATTENTIONS[name].frameworks)})")
            problem = case_rule_problem(name, case.to_dict()) if name in ATTENTIONS else None
            if problem:
                raise ValueError(f"options.eval_attentions: {problem}")
    elif case.options:
        raise ValueError(f"options {sorted(case.options)}: mode {case.mode!r} takes no options "
                         "(only approx and task do)")


def measure_approx(case, variant: Variant) -> dict:
    if variant.kind != "layer" or not (variant.hashed or variant.attention == "custom"):
        raise ValueError(f"mode 'approx' needs the LSH layer or a registered attention, not "
                         f"{variant.name!r}")
    opts = _options(case, APPROX_OPTIONS)
    module = _framework_module(case, "approximation")
    return module.measure_approximation(
        attention=attention_spec(variant, case), d_model=case.d_model, length=case.length,
        batch=case.batch, inputs=opts["inputs"], n_clusters=opts["n_clusters"],
        n_seeds=opts["n_seeds"], seed=case.seed, device=case.device, dtype=case.dtype)


def checkpoint_dir() -> Path | None:
    """``<run dir>/checkpoints`` (the runner says where the run is), else None."""
    run_dir = os.environ.get("ATTNBENCH_RUN_DIR")
    return Path(run_dir) / "checkpoints" if run_dir else None


TASK_OPTIONS = {"task": "duplication", "eval_attentions": ["full", "lsh-8", "lsh-4", "lsh-2",
                                                          "lsh-1"],
                "steps": 1000, "lr": 1e-3, "eval_batches": 4, "log_every": 50,
                "plateau_steps": 0, "plateau_delta": 0.01, "plateau_below": 0.1}


def task_config(case, variant: Variant):
    """The :class:`~attnbench.tasks.config.TaskConfig` of a ``task`` case.

    The attention used in training is the case's registered attention (``Case.attention``)
    where it names one, else the variant's: a shared-QK model trains with ``full`` (exact
    shared-QK attention, the paper's "full" rows), an LSH model with ``lsh-<n_hashes>``.
    Model sizes, batch, seed, ``chunk_len`` and ``n_buckets`` come from the case; ``task``,
    ``eval_attentions``, ``steps``, ``lr``, ``eval_batches`` and ``log_every`` from its
    options.
    """
    from attnbench.tasks.config import TaskConfig

    if case.attention:
        train_attention = case.attention  # a registered attention (Case.attention)
    elif variant.attention == "lsh":
        train_attention = f"lsh-{case.n_hashes}"
    elif variant.attention == "shared_qk":
        train_attention = "full"
    else:
        raise ValueError(f"mode 'task' needs shared-QK, LSH or a registered attention (so one "
                         f"set of weights can be evaluated under each), not variant "
                         f"{variant.name!r}")
    opts = _options(case, TASK_OPTIONS)
    return TaskConfig(
        task=opts["task"], vocab_size=case.vocab_size, length=case.length,
        d_model=case.d_model, d_ff=case.d_ff, n_heads=case.n_heads, n_layers=case.depth,
        train_attention=train_attention, eval_attentions=tuple(opts["eval_attentions"]),
        steps=opts["steps"], batch=case.batch, lr=opts["lr"], seed=case.seed,
        chunk_len=case.chunk_len, n_buckets=case.n_buckets, eval_batches=opts["eval_batches"],
        log_every=opts["log_every"], reversible=variant.reversible,
        plateau_steps=opts["plateau_steps"], plateau_delta=opts["plateau_delta"],
        plateau_below=opts["plateau_below"])


def measure_task(case, variant: Variant) -> dict:
    config = task_config(case, variant)
    module = _framework_module(case, "train")
    metrics = module.run_task(config, checkpoint_dir=checkpoint_dir(), device=case.device)
    metrics["task_train_attention"] = config.train_attention
    metrics["task_name"] = config.task
    return metrics


def measure(case, variant: Variant) -> dict:
    if case.mode == "approx":
        metrics = measure_approx(case, variant)
    elif case.mode == "task":
        metrics = measure_task(case, variant)
    else:
        raise ValueError(f"mode={case.mode!r}: not an accuracy mode")
    # These modes run the kernel ``auto`` picks (the suite refuses any other): say which.
    metrics["kernel"] = case.resolved_kernel
    return metrics
