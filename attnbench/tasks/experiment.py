"""One train x eval experiment, the same for both frameworks: load or train, then evaluate.

The framework supplies ``train(config) -> Trained`` and ``evaluate(config, weights, name) ->
{"accuracy", "loss"}``; everything else (checkpoint keying, timing, the metric names the
harness records) lives here once, so the torch and JAX runs cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from attnbench.tasks.checkpoint import Trained, checkpoint_path, load_trained, save_trained
from attnbench.tasks.config import TaskConfig
from attnbench.tasks.stopping import stop_reason


def load_or_train(config: TaskConfig, *, framework: str,
                  train: Callable[[TaskConfig], Trained],
                  checkpoint_dir: str | Path | None) -> tuple[Trained, Path | None, bool]:
    """(weights and curve, checkpoint path or None, whether they were loaded): the checkpoint
    of ``config``'s training settings in ``checkpoint_dir`` if there is one, else a fresh
    training run, saved there when a directory is given."""
    if not isinstance(config, TaskConfig):
        raise ValueError(f"config={config!r}: must be a TaskConfig")
    path = None if checkpoint_dir is None else checkpoint_path(checkpoint_dir, config, framework)
    if path is not None and path.exists():
        return load_trained(path), path, True
    trained = train(config)
    if path is not None:
        save_trained(path, config, framework, trained)
    return trained, path, False


def run_experiment(config: TaskConfig, *, framework: str,
                   train: Callable[[TaskConfig], Trained],
                   evaluate: Callable[[TaskConfig, dict, str], dict[str, float]],
                   checkpoint_dir: str | Path | None) -> dict:
    """Train ``config`` (or load its checkpoint from ``checkpoint_dir``), then evaluate it under
    every eval attention and under the training attention.

    Returns ``task_accuracy`` (under ``train_attention``), ``task_eval`` and
    ``task_eval_loss`` (eval name -> value), ``task_loss_curve``, ``task_train_wall_s`` (of the
    run that trained the weights, also when they were loaded), ``task_eval_wall_s``,
    ``task_steps`` (trained), ``task_step_budget``, ``task_stop`` (``plateau``, ``budget`` or
    ``fixed``: :func:`attnbench.tasks.stopping.stop_reason`), ``task_converged`` (True when it
    plateaued, False when it ran out of budget, None without the rule), ``task_checkpoint``
    (path or None) and ``task_from_checkpoint``.
    """
    trained, path, loaded = load_or_train(config, framework=framework, train=train,
                                          checkpoint_dir=checkpoint_dir)
    start = time.perf_counter()
    results = {name: evaluate(config, trained.weights, name) for name in config.eval_attentions}
    if config.train_attention not in results:
        results[config.train_attention] = evaluate(config, trained.weights,
                                                   config.train_attention)
    eval_wall_s = time.perf_counter() - start
    stop = stop_reason(trained.loss_curve, config)
    return {
        "task_accuracy": results[config.train_attention]["accuracy"],
        "task_eval": {name: results[name]["accuracy"] for name in config.eval_attentions},
        "task_eval_loss": {name: results[name]["loss"] for name in config.eval_attentions},
        "task_loss_curve": trained.loss_curve,
        "task_train_wall_s": trained.wall_s,
        "task_eval_wall_s": eval_wall_s,
        "task_steps": int(trained.loss_curve[-1][0]) if trained.loss_curve else config.steps,
        "task_step_budget": config.steps,
        "task_stop": stop,
        "task_converged": None if stop == "fixed" else stop == "plateau",
        "task_checkpoint": None if path is None else str(path),
        "task_from_checkpoint": loaded,
    }
