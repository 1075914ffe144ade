"""Training and evaluation on the synthetic tasks (JAX): a tiny run learns duplication, the
checkpoint is keyed and reloaded, and evaluation under another attention is exactly a fresh
model with the trained weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnbench.jax_impl.model import language_model
from attnbench.jax_impl.train import evaluate, run_task, task_batch, train
from attnbench.tasks.checkpoint import load_trained, unflatten_tree
from attnbench.tasks.config import TaskConfig
from attnbench.tasks.data import EVAL_STREAM

# Seconds on two CPU cores; learns the copy by ~75 steps (chance is 1 / 7).
TINY = TaskConfig(task="duplication", vocab_size=8, length=16, d_model=32, d_ff=32, n_heads=2,
                  chunk_len=4, batch=32, steps=100, lr=3e-3, eval_batches=2, log_every=25,
                  train_attention="full", eval_attentions=("full", "lsh-2"))
CHANCE = 1 / 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoints")
    return run_task(TINY, checkpoint_dir=directory), directory


def test_a_tiny_run_learns_duplication_far_above_chance(trained):
    result, _ = trained
    assert result["task_accuracy"] >= 0.9, (result["task_accuracy"], CHANCE)
    assert result["task_eval"]["full"] == result["task_accuracy"]
    assert result["task_eval"]["lsh-2"] >= 0.9, result["task_eval"]
    curve = result["task_loss_curve"]
    assert [step for step, _ in curve] == [25, 50, 75, 100]
    assert curve[-1][1] < curve[0][1] / 10, curve
    assert result["task_steps"] == 100 and not result["task_from_checkpoint"]
    assert result["task_train_wall_s"] > 0 and result["task_eval_wall_s"] > 0
    json.dumps(result)  # the harness stores it as JSON


def test_run_task_reloads_the_checkpoint_of_the_same_training(trained):
    result, directory = trained
    again = run_task(TINY.replace(eval_attentions=("lsh-2", "full"), eval_batches=2),
                     checkpoint_dir=directory)
    assert again["task_from_checkpoint"] and again["task_checkpoint"] == result["task_checkpoint"]
    assert again["task_eval"] == result["task_eval"]
    assert again["task_loss_curve"] == result["task_loss_curve"]
    assert again["task_train_wall_s"] == result["task_train_wall_s"]  # of the run that trained
    other = run_task(TINY.replace(steps=1, log_every=1), checkpoint_dir=directory)
    assert not other["task_from_checkpoint"]
    assert other["task_checkpoint"] != result["task_checkpoint"]


def test_evaluation_under_another_attention_is_a_fresh_model_with_the_weights(trained):
    """Train under LSH, evaluate under exact attention: the result equals a model built from
    scratch under that spec, loaded with the checkpoint's weights, scored by hand; and an
    evaluation does not depend on what was evaluated before it."""
    result, directory = trained
    config = TINY.replace(train_attention="lsh-2", steps=20, log_every=10)
    lsh_run = run_task(config, checkpoint_dir=directory)
    weights = load_trained(lsh_run["task_checkpoint"]).weights

    spec = config.model_spec("full")
    params = jax.tree.map(jnp.asarray, unflatten_tree(weights))
    fresh = jax.jit(lambda p, tokens: language_model(p, tokens, spec=spec,
                                                     key=jax.random.key(0)))
    correct = count = 0
    for index in range(config.eval_batches):
        tokens, targets, mask = task_batch(config, EVAL_STREAM, index)
        hits = (np.asarray(fresh(params, jnp.asarray(tokens))).argmax(-1) == targets) & mask
        correct, count = correct + int(hits.sum()), count + int(mask.sum())
    assert lsh_run["task_eval"]["full"] == correct / count

    alone = evaluate(config, weights, "lsh-2")
    assert lsh_run["task_eval"]["lsh-2"] == alone["accuracy"] == lsh_run["task_accuracy"]
    assert lsh_run["task_eval_loss"]["lsh-2"] == alone["loss"]


def test_training_is_reproducible_from_the_seed():
    config = TINY.replace(steps=3, log_every=1, train_attention="lsh-2")
    first, second = train(config), train(config)
    assert first.loss_curve == second.loss_curve
    for name, array in first.weights.items():
        np.testing.assert_array_equal(array, second.weights[name], err_msg=name)
    changed = train(config.replace(seed=1))
    assert changed.loss_curve != first.loss_curve


def test_a_torch_checkpoint_evaluates_alike_in_jax(trained, tmp_path):
    """Checkpoints are framework-neutral: torch's trained weights score the same here."""
    from attnbench.torch_impl import train as torch_train

    config = TINY.replace(steps=30, log_every=10)
    torch_run = torch_train.run_task(config, checkpoint_dir=tmp_path)
    weights = load_trained(torch_run["task_checkpoint"]).weights
    assert evaluate(config, weights, "full")["accuracy"] == torch_run["task_eval"]["full"]


def test_associative_recall_trains_and_evaluates():
    config = TINY.replace(task="recall", steps=5, log_every=5)  # 3 keys, padded
    trained = train(config)
    metrics = evaluate(config, trained.weights, "lsh-2")
    assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])
    assert len(trained.loss_curve) == 1


def test_the_plateau_rule_stops_a_learned_run_before_its_budget_and_says_so():
    config = TINY.replace(steps=2000, log_every=10, plateau_steps=50, plateau_delta=0.02)
    result = run_task(config, checkpoint_dir=None)
    assert result["task_stop"] == "plateau" and result["task_converged"] is True, \
        result["task_loss_curve"]
    assert result["task_steps"] < 2000 and result["task_step_budget"] == 2000
    assert result["task_steps"] == result["task_loss_curve"][-1][0]
    assert result["task_accuracy"] >= 0.9


def test_a_run_that_never_plateaus_used_its_budget_and_is_not_converged():
    config = TINY.replace(steps=30, log_every=5, plateau_steps=10)  # too short to learn
    result = run_task(config, checkpoint_dir=None)
    assert result["task_stop"] == "budget" and result["task_converged"] is False
    assert result["task_steps"] == 30
    assert run_task(TINY.replace(steps=30), checkpoint_dir=None)["task_stop"] == "fixed"
