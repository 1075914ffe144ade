"""Framework-neutral checkpoints: one ``.npz`` of named float arrays plus a JSON sidecar.

Array names are the torch state-dict names (``stack.blocks.0.f.attention.w_qk.weight``), which
the JAX pytrees share (``attnbench.convert``), so a checkpoint written by either framework
loads in both. The sidecar keeps what the run reported (config, loss curve, training time), so
evaluation can be re-run from disk alone. Both files are written atomically
(:func:`attnbench.safeio.write_atomic`): a killed run never leaves a half-written checkpoint
that a later run would trust, and a ``checkpoints`` that is a link is refused, not followed.

Keying: ``<checkpoint_dir>/<task>-<framework>-<TaskConfig.train_key()>.npz`` (+ ``.json``).
The key hashes every field that decides the weights and none that only decides evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from attnbench.safeio import UnsafePathError, write_atomic


def checkpoint_path(checkpoint_dir: str | Path, config, framework: str) -> Path:
    """Where ``config``'s weights trained by ``framework`` ("torch" or "jax") are kept."""
    return Path(checkpoint_dir) / f"{config.task}-{framework}-{config.train_key()}.npz"


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write ``arrays`` (name -> array) and the JSON-able ``meta`` atomically; returns path."""
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.is_symlink():
        raise UnsafePathError(f"{path.parent}: is a symbolic link (to "
                              f"{os.readlink(path.parent)}); checkpoints are written only "
                              "inside the run directory")
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(a) for name, a in arrays.items()})
    write_atomic(path.with_suffix(".json"),
                 json.dumps(_finite(meta), indent=1, sort_keys=True, allow_nan=False))
    write_atomic(path, buffer.getvalue())  # the .npz last: it means both files are complete
    return path


def _finite(value):
    """``value`` with every non-finite float as None: JSON has no NaN (a diverged loss is
    recorded as a gap, never as a token other readers refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) as written by :func:`save_checkpoint`."""
    path = Path(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    return arrays, json.loads(path.with_suffix(".json").read_text())


def flatten_tree(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict / list pytree -> {"a.b.0.c": array}: the torch state-dict naming."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: np.asarray(tree)}
    flat: dict[str, np.ndarray] = {}
    for key, value in items:
        flat.update(flatten_tree(value, f"{prefix}.{key}" if prefix else key))
    return flat


def unflatten_tree(flat: dict[str, np.ndarray]):
    """Inverse of :func:`flatten_tree`: dicts whose keys are 0..n-1 become lists."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(tree)


def _lists(tree):
    if not isinstance(tree, dict):
        return tree
    converted = {key: _lists(value) for key, value in tree.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[str(i)] for i in range(len(converted))]
    return converted


class Trained(NamedTuple):
    """What one training run leaves: the weights under their state-dict names, the loss curve
    ([step, mean training loss over the steps since the previous point]) and the wall time."""

    weights: dict[str, np.ndarray]
    loss_curve: list[list[float]]
    wall_s: float


def save_trained(path: str | Path, config, framework: str, trained: Trained) -> Path:
    meta = {"config": dataclasses.asdict(config), "framework": framework,
            "loss_curve": trained.loss_curve, "train_wall_s": trained.wall_s}
    return save_checkpoint(path, trained.weights, meta)


def load_trained(path: str | Path) -> Trained:
    arrays, meta = load_checkpoint(path)
    return Trained(arrays, meta["loss_curve"], meta["train_wall_s"])
