"""Training and evaluation on the synthetic tasks (PyTorch); ``jax_impl/train.py`` mirrors it.

Data comes from the shared NumPy generators (``attnbench.tasks.data``), so both frameworks
train on identical batches. Weights travel as NumPy arrays under their state-dict names: a
model is evaluated under another attention by building a *fresh* model of that spec and loading
the weights, so nothing but the weights can carry over from training to evaluation.
Randomness: initial weights from ``config.seed`` (global RNG forked, never touched), LSH
rotations from a generator seeded by ``config.seed`` in training and by (seed, batch index) in
evaluation, so an evaluation does not depend on what was evaluated before it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnbench.tasks.checkpoint import Trained
from attnbench.tasks.config import TaskConfig
from attnbench.tasks.data import EVAL_STREAM, TRAIN_STREAM, Batch, make_batch
from attnbench.tasks.experiment import run_experiment
from attnbench.tasks.stopping import plateaued, rule
from attnbench.torch_impl.common import derive_seed
from attnbench.torch_impl.model import LanguageModel

FRAMEWORK = "torch"
_EVAL_SEED_STREAM = 7  # sub-stream of config.seed for evaluation's LSH rotations


def task_batch(config: TaskConfig, stream: int, index: int) -> Batch:
    """Batch ``index`` of ``stream`` (train or eval) for ``config``, as NumPy arrays."""
    return make_batch(config.task, seed=config.seed, stream=stream, index=index,
                      batch=config.batch, length=config.length, vocab_size=config.vocab_size)


def init_weights(config: TaskConfig) -> dict[str, np.ndarray]:
    """Initial weights of ``config``'s model, from ``config.seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LanguageModel(config.model_spec())
    return weights_of(model)


def weights_of(model: LanguageModel) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def build_model(config: TaskConfig, weights: dict[str, np.ndarray], attention: str | None = None,
                *, device: str = "cpu") -> LanguageModel:
    """A fresh model of ``config`` under ``attention`` (the training one when None) holding
    ``weights``."""
    model = LanguageModel(config.model_spec(attention), device=device)
    model.load_state_dict({name: torch.from_numpy(np.asarray(a)) for name, a in weights.items()})
    return model


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """(mean cross-entropy over scored positions, number of correct argmax predictions, number
    of scored positions). logits [B, L, vocab] float32, targets [B, L], mask [B, L] bool."""
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten().long(),
                             reduction="none")  # (B*L,)
    scored = mask.flatten()
    correct = (logits.argmax(-1).flatten() == targets.flatten()) & scored
    return losses[scored].mean(), int(correct.sum()), int(scored.sum())


def _on_device(batch: Batch, device: str):
    return tuple(torch.from_numpy(a).to(device) for a in batch)


def train(config: TaskConfig, *, device: str = "cpu") -> Trained:
    """Adam at ``config.lr`` for at most ``config.steps`` steps of ``config.batch`` sequences
    under ``config.train_attention``, stopping once the loss has plateaued when
    ``config.plateau_steps`` asks (:mod:`attnbench.tasks.stopping`); the loss curve averages the
    loss over each ``log_every`` steps."""
    model = build_model(config, init_weights(config), device=device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, TRAIN_STREAM))
    curve, window = [], []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        tokens, targets, mask = _on_device(task_batch(config, TRAIN_STREAM, step), device)
        loss, _, _ = masked_loss(model(tokens, generator=generator), targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.detach())
        if step % config.log_every == 0 or step == config.steps:
            curve.append([step, float(torch.stack(window).mean())])
            window = []
            if plateaued(curve, **rule(config)):
                break
    return Trained(weights_of(model), curve, time.perf_counter() - start)


@torch.no_grad()
def evaluate(config: TaskConfig, weights: dict[str, np.ndarray], attention: str, *,
             device: str = "cpu") -> dict[str, float]:
    """Accuracy and loss over ``config.eval_batches`` held-out batches of a fresh model under
    ``attention`` with ``weights``; LSH rotations are seeded per batch."""
    model = build_model(config, weights, attention, device=device)
    model.eval()
    correct = count = 0
    loss_sum = 0.0
    for index in range(config.eval_batches):
        tokens, targets, mask = _on_device(task_batch(config, EVAL_STREAM, index), device)
        seed = derive_seed(derive_seed(config.seed, _EVAL_SEED_STREAM), index)
        logits = model(tokens, generator=torch.Generator().manual_seed(seed))
        loss, batch_correct, batch_count = masked_loss(logits, targets, mask)
        correct, count = correct + batch_correct, count + batch_count
        loss_sum += float(loss) * batch_count
    return {"accuracy": correct / count, "loss": loss_sum / count}


def run_task(config: TaskConfig, *, checkpoint_dir: str | Path | None,
             device: str = "cpu") -> dict:
    """Train (or load the checkpoint of the same training settings from ``checkpoint_dir``,
    keyed as ``attnbench.tasks.checkpoint`` says) and evaluate under every eval attention; the
    metric names are those of :func:`attnbench.tasks.experiment.run_experiment`."""
    return run_experiment(
        config, framework=FRAMEWORK, checkpoint_dir=checkpoint_dir,
        train=lambda c: train(c, device=device),
        evaluate=lambda c, w, name: evaluate(c, w, name, device=device))
