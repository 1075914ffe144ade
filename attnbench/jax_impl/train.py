"""Training and evaluation on the synthetic tasks (JAX); mirrors ``torch_impl/train.py``.

Data comes from the shared NumPy generators (``attnbench.tasks.data``), so both frameworks
train on identical batches. Weights travel as NumPy arrays under the torch state-dict names: a
model is evaluated under another attention by applying the pure model function of that spec to
the weights, so nothing but the weights can carry over from training to evaluation.
Randomness: initial weights from ``config.seed``, LSH rotations from a key folded with the step
in training and with the batch index in evaluation, so an evaluation does not depend on what
was evaluated before it. Steps and evaluations are jitted with the spec closed over (static).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnbench.jax_impl.common import resolve_device
from attnbench.jax_impl.model import init_language_model, language_model
from attnbench.spec import ModelSpec
from attnbench.tasks.checkpoint import Trained, flatten_tree, unflatten_tree
from attnbench.tasks.config import TaskConfig
from attnbench.tasks.data import EVAL_STREAM, TRAIN_STREAM, Batch, make_batch
from attnbench.tasks.experiment import run_experiment
from attnbench.tasks.stopping import plateaued, rule

FRAMEWORK = "jax"
_EVAL_SEED_STREAM = 7  # sub-stream of config.seed for evaluation's LSH rotations


def task_batch(config: TaskConfig, stream: int, index: int) -> Batch:
    """Batch ``index`` of ``stream`` (train or eval) for ``config``, as NumPy arrays."""
    return make_batch(config.task, seed=config.seed, stream=stream, index=index,
                      batch=config.batch, length=config.length, vocab_size=config.vocab_size)


def init_weights(config: TaskConfig) -> dict[str, np.ndarray]:
    """Initial weights of ``config``'s model, from ``config.seed`` alone."""
    return weights_of(init_language_model(jax.random.key(config.seed), config.model_spec()))


def weights_of(params) -> dict[str, np.ndarray]:
    return {name: np.array(a) for name, a in flatten_tree(params).items()}


def build_model(config: TaskConfig, weights: dict[str, np.ndarray], attention: str | None = None):
    """``(params, apply)``: ``weights`` as a parameter pytree and ``apply(params, tokens, key,
    train)`` the model of ``config`` under ``attention`` (the training one when None)."""
    spec = config.model_spec(attention)
    params = jax.tree.map(jnp.asarray, unflatten_tree(weights))

    def apply(p, tokens, key, train):
        return language_model(p, tokens, spec=spec, key=key, train=train)

    return params, apply


def masked_loss(logits, targets, mask):
    """(mean cross-entropy over scored positions, number of correct argmax predictions, number
    of scored positions). logits [B, L, vocab] float32, targets [B, L], mask [B, L] bool."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, L)
    count = jnp.sum(mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) & mask)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / count, correct, count


@functools.lru_cache(maxsize=16)
def _train_step(spec: ModelSpec, lr: float):
    """(optimizer, jitted step) for ``spec``: cached, so a spec compiles once per process."""
    optimizer = optax.adam(lr)

    def loss_fn(p, tokens, targets, mask, step_key):
        logits = language_model(p, tokens, spec=spec, key=step_key, train=True)
        return masked_loss(logits, targets, mask)[0]

    @jax.jit
    def step_fn(p, state, tokens, targets, mask, step_key):
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens, targets, mask, step_key)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    return optimizer, step_fn


@functools.lru_cache(maxsize=16)
def _eval_step(spec: ModelSpec):
    """Jitted (loss, correct, count) of one batch under ``spec``, cached per spec."""
    return jax.jit(lambda p, tokens, targets, mask, key: masked_loss(
        language_model(p, tokens, spec=spec, key=key, train=False), targets, mask))


def _on_device(batch: Batch):
    return tuple(jnp.asarray(a) for a in batch)


def train(config: TaskConfig, *, device: str = "cpu") -> Trained:
    """Adam at ``config.lr`` for at most ``config.steps`` steps of ``config.batch`` sequences
    under ``config.train_attention``, stopping once the loss has plateaued when
    ``config.plateau_steps`` asks (:mod:`attnbench.tasks.stopping`); the loss curve averages the
    loss over each ``log_every`` steps."""
    with jax.default_device(resolve_device(device)):
        return _train(config)


def _train(config: TaskConfig) -> Trained:
    params, _ = build_model(config, init_weights(config))
    optimizer, step_fn = _train_step(config.model_spec(), config.lr)
    opt_state = optimizer.init(params)
    key = jax.random.fold_in(jax.random.key(config.seed), TRAIN_STREAM)
    curve, window = [], []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        tokens, targets, mask = _on_device(task_batch(config, TRAIN_STREAM, step))
        params, opt_state, loss = step_fn(params, opt_state, tokens, targets, mask,
                                          jax.random.fold_in(key, step))
        window.append(loss)
        if step % config.log_every == 0 or step == config.steps:
            curve.append([step, float(jnp.mean(jnp.stack(window)))])
            window = []
            if plateaued(curve, **rule(config)):
                break
    weights = weights_of(params)  # waits for the last step
    return Trained(weights, curve, time.perf_counter() - start)


def evaluate(config: TaskConfig, weights: dict[str, np.ndarray], attention: str, *,
             device: str = "cpu") -> dict[str, float]:
    """Accuracy and loss over ``config.eval_batches`` held-out batches of the model under
    ``attention`` with ``weights``; LSH rotations are keyed per batch."""
    with jax.default_device(resolve_device(device)):
        return _evaluate(config, weights, attention)


def _evaluate(config: TaskConfig, weights: dict[str, np.ndarray], attention: str):
    params, _ = build_model(config, weights, attention)
    eval_fn = _eval_step(config.model_spec(attention))
    key = jax.random.fold_in(jax.random.key(config.seed), _EVAL_SEED_STREAM)
    correct = count = 0
    loss_sum = 0.0
    for index in range(config.eval_batches):
        tokens, targets, mask = _on_device(task_batch(config, EVAL_STREAM, index))
        loss, batch_correct, batch_count = eval_fn(params, tokens, targets, mask,
                                                   jax.random.fold_in(key, index))
        correct, count = correct + int(batch_correct), count + int(batch_count)
        loss_sum += float(loss) * int(batch_count)
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
