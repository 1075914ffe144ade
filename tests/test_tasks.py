"""The synthetic-task data, the task settings, checkpoints and the confidence intervals:
NumPy only, plus one check that both frameworks' training loops read identical batches."""

import json
import math
import re

import numpy as np
import pytest

from attnbench import reference as R
from attnbench.tasks import approx_inputs, data
from attnbench.tasks.checkpoint import (
    Trained,
    checkpoint_path,
    flatten_tree,
    load_trained,
    save_trained,
    unflatten_tree,
)
from attnbench.tasks.config import PRESETS, TaskConfig, parse_attention
from attnbench.tasks.stats import mean_ci, t975


def batch_of(task, *, seed=0, stream=data.TRAIN_STREAM, index=0, batch=4, length=20,
             vocab_size=11):
    return data.make_batch(task, seed=seed, stream=stream, index=index, batch=batch,
                           length=length, vocab_size=vocab_size)


# --------------------------------------------------------------------------------------------
# Generators: format, masking, determinism
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [4, 20, 66], ids=lambda n: f"L{n}")
def test_duplication_is_0w0w_scored_on_the_second_w(length):
    tokens, targets, mask = batch_of("duplication", length=length, batch=5, vocab_size=7)
    half = length // 2
    assert tokens.shape == targets.shape == mask.shape == (5, length)
    assert tokens.dtype == targets.dtype == np.int32 and mask.dtype == bool
    assert (tokens[:, 0] == 0).all() and (tokens[:, half] == 0).all()
    w = tokens[:, 1:half]
    assert ((w >= 1) & (w <= 6)).all()
    np.testing.assert_array_equal(tokens[:, half + 1:], w)
    np.testing.assert_array_equal(targets[:, :-1], tokens[:, 1:])  # next token
    scored = np.zeros(length, bool)
    scored[half:length - 1] = True  # the positions whose next token is the second w
    np.testing.assert_array_equal(mask, np.broadcast_to(scored, mask.shape))
    np.testing.assert_array_equal(np.where(mask, targets, -1)[:, half:length - 1], w)


def test_recall_targets_the_value_of_the_queried_key():
    length, vocab = 20, 21
    tokens, targets, mask = batch_of("recall", length=length, vocab_size=vocab, batch=16)
    n_pairs, n_keys = data.recall_layout(length, vocab)
    assert (n_pairs, n_keys) == (9, 10)
    assert mask[:, -1].all() and mask.sum() == 16
    for row, target in zip(tokens, targets[:, -1], strict=True):
        keys, values = row[:2 * n_pairs:2], row[1:2 * n_pairs:2]
        assert len(set(keys)) == n_pairs and ((keys >= 1) & (keys <= n_keys)).all()
        assert ((values > n_keys) & (values < vocab)).all()
        assert row[-2] == data.SEPARATOR and row[-1] in keys
        assert target == values[list(keys).index(row[-1])]


def test_recall_pads_when_the_key_set_is_smaller_than_the_length():
    tokens, _, _ = batch_of("recall", length=20, vocab_size=7)  # 3 keys fit, 9 would
    n_pairs, _ = data.recall_layout(20, 7)
    assert n_pairs == 3 and (tokens[:, :20 - 2 * n_pairs - 2] == data.SEPARATOR).all()


@pytest.mark.parametrize("task", data.TASKS)
def test_a_batch_depends_on_seed_stream_and_index_only(task):
    first = batch_of(task, seed=3, index=5)
    for field, again in zip(first, batch_of(task, seed=3, index=5), strict=True):
        np.testing.assert_array_equal(field, again)
    for changed in (dict(seed=4, index=5), dict(seed=3, index=6),
                    dict(seed=3, index=5, stream=data.EVAL_STREAM)):
        assert not np.array_equal(first.tokens, batch_of(task, **changed).tokens), changed


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(task="copy"), "task='copy': must be one of duplication, recall"),
    (dict(task="duplication", length=21), "length=21: must be even"),
    (dict(task="duplication", vocab_size=1), "vocab_size=1: must be >= 2"),
    (dict(task="recall", vocab_size=4), "vocab_size=4: must be >= 5"),
])
def test_generators_name_the_bad_value(kwargs, message):
    args = dict(task="duplication", seed=0, stream=0, index=0, batch=2, length=20,
                vocab_size=11) | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        data.make_batch(**args)


def test_both_frameworks_train_and_evaluate_on_identical_batches():
    torch_train = pytest.importorskip("attnbench.torch_impl.train")
    jax_train = pytest.importorskip("attnbench.jax_impl.train")
    config = TaskConfig.preset("cpu", task="recall", seed=9)
    for stream, index in ((data.TRAIN_STREAM, 1), (data.EVAL_STREAM, 0)):
        for a, b in zip(torch_train.task_batch(config, stream, index),
                        jax_train.task_batch(config, stream, index), strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# TaskConfig
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    (dict(task="sort"), "TaskConfig.task='sort': must be one of"),
    (dict(length=63), "TaskConfig.length=63: must be even"),
    (dict(steps=0), "TaskConfig.steps=0: must be >= 1"),
    (dict(lr=-1.0), "TaskConfig.lr=-1.0: must be a number > 0"),
    (dict(train_attention="lsh"), "TaskConfig.train_attention='lsh': must be 'full'"),
    (dict(eval_attentions=("full", "lsh-0")), "TaskConfig.eval_attentions='lsh-0'"),
    (dict(eval_attentions=["full"]), "TaskConfig.eval_attentions=\\['full'\\]: must be a"),
    (dict(eval_attentions=("full", "full")), "must not repeat a name"),
    (dict(length=68), "length=68: must be a multiple of AttentionSpec.chunk_len=8"),
    (dict(n_buckets=5), "AttentionSpec.n_buckets=5: must be even"),
    (dict(d_model=66), "d_model=66: must be divisible by"),
    (dict(task="recall", vocab_size=4), "TaskConfig.vocab_size=4: must be >= 5"),
])
def test_task_config_names_field_value_and_rule(changes, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig.preset("cpu", **changes)


def test_attention_strings_become_specs():
    config = TaskConfig.preset("cpu", n_buckets=4)
    full, lsh = config.attention_spec("full"), config.attention_spec("lsh-4")
    assert (full.kind, full.causal) == ("shared_qk", True)
    assert (lsh.kind, lsh.n_hashes, lsh.n_buckets, lsh.chunk_len) == ("lsh", 4, 4, 8)
    assert config.model_spec("lsh-2").attention.n_hashes == 2
    assert config.model_spec().attention == full  # the training attention
    assert parse_attention("lsh-16") == ("lsh", 16)


def test_presets_paper_is_table_2_and_cpu_is_scaled_down():
    paper = TaskConfig.preset("paper")
    assert (paper.length, paper.vocab_size, paper.n_layers, paper.d_model, paper.d_ff,
            paper.n_heads) == (1024, 128, 1, 256, 256, 4)
    assert paper.length // 2 - 1 == 511  # |w|, as in the paper
    cpu = TaskConfig.preset("cpu", steps=5)
    assert cpu.steps == 5 and cpu.length < paper.length and set(PRESETS) == {"cpu", "paper"}
    with pytest.raises(ValueError, match="preset='gpu': must be one of cpu, paper"):
        TaskConfig.preset("gpu")


def test_train_key_covers_training_settings_only():
    config = TaskConfig.preset("cpu")
    assert config.train_key() == config.replace(eval_attentions=("lsh-1",),
                                                eval_batches=9).train_key()
    for changes in (dict(steps=999), dict(train_attention="lsh-2"), dict(seed=1),
                    dict(lr=3e-4)):
        assert config.replace(**changes).train_key() != config.train_key(), changes


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def test_tree_flattening_uses_state_dict_names_and_round_trips():
    tree = {"embed": {"weight": np.ones((2, 3))},
            "stack": {"blocks": [{"f": {"w": np.zeros(2)}}, {"f": {"w": np.ones(2)}}]}}
    flat = flatten_tree(tree)
    assert sorted(flat) == ["embed.weight", "stack.blocks.0.f.w", "stack.blocks.1.f.w"]
    back = unflatten_tree(flat)
    assert isinstance(back["stack"]["blocks"], list)
    np.testing.assert_array_equal(back["stack"]["blocks"][1]["f"]["w"], np.ones(2))


def test_checkpoint_round_trip_is_keyed_and_leaves_no_temporaries(tmp_path):
    config = TaskConfig.preset("cpu", steps=7)
    path = checkpoint_path(tmp_path / "ck", config, "torch")
    assert path.name == f"duplication-torch-{config.train_key()}.npz"
    trained = Trained({"a.weight": np.arange(6.0).reshape(2, 3)}, [[7, 1.5]], 2.0)
    save_trained(path, config, "torch", trained)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.with_suffix(".json").name,
                                                             path.name]
    loaded = load_trained(path)
    np.testing.assert_array_equal(loaded.weights["a.weight"], trained.weights["a.weight"])
    assert (loaded.loss_curve, loaded.wall_s) == ([[7, 1.5]], 2.0)
    assert json.loads(path.with_suffix(".json").read_text())["config"]["steps"] == 7


# --------------------------------------------------------------------------------------------
# Statistics and the approximation inputs
# --------------------------------------------------------------------------------------------


def test_mean_ci_is_the_student_t_half_width():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # s = 1, n = 3, t(0.975, 2) = 4.302652730
    assert mean == 2.0 and half == pytest.approx(4.302652730 / math.sqrt(3), rel=1e-9)
    assert t975(4) == pytest.approx(2.776445105, rel=1e-9)
    assert t975(60) == pytest.approx(2.000297822, rel=1e-6)  # beyond the table
    assert t975(1000) == pytest.approx(1.962339081, rel=1e-6)
    assert math.isnan(mean_ci([0.5])[1])


def test_clustered_inputs_have_the_asked_number_of_clusters():
    qk, v = approx_inputs.synthetic_qkv("clustered", seed=0, batch=1, n_heads=1, length=256,
                                        d_head=16, n_clusters=5)
    assert qk.shape == v.shape == (1, 1, 256, 16)
    unit = qk[0, 0] / np.linalg.norm(qk[0, 0], axis=-1, keepdims=True)
    similar = unit @ unit.T > 0.9  # same centre (noise is a tenth of the scale)
    groups = {tuple(row) for row in similar}
    assert len(groups) == 5


def test_rotations_of_fewer_hashes_are_a_prefix():
    eight = approx_inputs.rotations(seed=1, n_heads=2, d_head=5, n_hashes=8, n_buckets=6)
    two = approx_inputs.rotations(seed=1, n_heads=2, d_head=5, n_hashes=2, n_buckets=6)
    assert eight.shape == (2, 5, 8, 3) and eight.dtype == np.float32
    np.testing.assert_array_equal(eight[:, :, :2], two)


@pytest.mark.parametrize(("inputs", "n_clusters", "message"), [
    ("uniform", 4, "inputs='uniform': must be one of random, clustered, trained"),
    ("clustered", 0, "n_clusters=0: must be an int >= 1"),
])
def test_approximation_inputs_name_the_bad_value(inputs, n_clusters, message):
    with pytest.raises(ValueError, match=message):
        approx_inputs.check_inputs(inputs, n_clusters)


def test_reference_recall_is_one_when_one_chunk_covers_the_sequence(rng):
    qk = rng.standard_normal((1, 2, 16, 4))
    buckets = rng.integers(0, 2, size=(1, 2, 1, 16))
    recall = R.lsh_recall(qk, buckets, n_buckets=2, chunk_len=16, causal=True)
    np.testing.assert_allclose(recall, 1.0, rtol=0, atol=1e-12)
    partial = R.lsh_recall(qk, rng.integers(0, 8, size=(1, 2, 1, 16)), n_buckets=8,
                           chunk_len=2, causal=False)
    assert (partial <= 1 + 1e-12).all() and partial.mean() < 1


# -- the plateau rule --------------------------------------------------------------------------

RULE = dict(plateau_steps=100, plateau_delta=0.01, plateau_below=0.1)


def _curve(losses, every=50):
    return [[every * (i + 1), loss] for i, loss in enumerate(losses)]


def test_a_flat_learned_curve_has_plateaued_and_a_falling_one_has_not():
    from attnbench.tasks.stopping import plateaued

    learned = _curve([4.0, 3.9, 1.0, 0.05, 0.045, 0.044, 0.043])
    assert plateaued(learned, **RULE)
    falling = _curve([4.0, 3.9, 1.0, 0.30, 0.20, 0.12, 0.05])
    assert not plateaued(falling, **RULE)
    assert not plateaued(learned, **{**RULE, "plateau_steps": 0})  # no rule


def test_the_plateau_before_learning_does_not_count():
    from attnbench.tasks.stopping import plateaued

    stuck = _curve([4.0, 3.95, 3.94, 3.94, 3.93, 3.93, 3.93])  # flat, but at chance
    assert not plateaued(stuck, **RULE)
    too_early = _curve([4.0, 0.04, 0.04])  # flat and learned, but under 2 x plateau_steps
    assert not plateaued(too_early, **RULE)


def test_the_stop_reason_is_read_back_from_a_stored_curve():
    from attnbench.tasks.stopping import stop_reason

    config = TaskConfig(steps=350, **RULE)
    assert stop_reason(_curve([4.0, 3.9, 1.0, 0.05, 0.045, 0.044, 0.043]), config) == "plateau"
    assert stop_reason(_curve([4.0, 3.9, 1.0, 0.30, 0.20, 0.12, 0.05]), config) == "budget"
    assert stop_reason(_curve([4.0, 0.1]), TaskConfig(steps=100)) == "fixed"


@pytest.mark.parametrize("changes, rule", [
    (dict(plateau_steps=-1), "plateau_steps=-1: must be >= 0"),
    (dict(plateau_steps=75, log_every=50), "must be a multiple of log_every=50"),
    (dict(plateau_steps=100, plateau_below=1.5),
     "plateau_below=1.5: must be a number > 0 and < 1"),
    (dict(plateau_steps=100, plateau_delta=0), "plateau_delta=0: must be a number > 0"),
])
def test_a_bad_plateau_rule_is_refused_naming_the_value(changes, rule):
    with pytest.raises(ValueError, match=re.escape(rule)):
        TaskConfig(**changes)


def test_the_plateau_rule_changes_the_checkpoint_key_only_when_on():
    plain = TaskConfig()
    assert plain.train_key() == TaskConfig(plateau_delta=0.5).train_key()  # rule off: unused
    assert plain.train_key() != TaskConfig(plateau_steps=100).train_key()
