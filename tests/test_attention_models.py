"""Bring your own attention (issue 24), in the models: a registered attention from a plugin
file outside the repository swapped into the Transformer and Reformer stacks (``attention =``
on a model variant) and into the synthetic task's train x eval matrix, in both frameworks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnbench import variants
from attnbench.cli import main
from attnbench.runner.case import Case
from attnbench.spec import AttentionSpec

MODEL_SUITE = '''name = "byo-models"
plugins = ["{plugin}"]
[defaults]
d_model = 16
n_heads = 2
d_ff = 16
vocab_size = 16
length = 32
chunk_len = 8
causal = true
threads = 1
warmup = 0
min_repeats = 1
max_repeats = 1
[[sweep]]
name = "the plugin in the Transformer stack"
variant = "transformer"
attention = "mine"
framework = ["torch", "jax"]
mode = ["forward", "forward-backward", "train-step"]
[[sweep]]
name = "the plugin in the Reformer's reversible stack"
variant = "reformer"
attention = "mine"
framework = ["torch", "jax"]
mode = "train-step"
[[sweep]]
name = "a matrix with the plugin's row and column"
variant = "transformer-shared-qk"
attention = ["mine", "local"]
framework = ["torch", "jax"]
exclude = [{{attention = "local", framework = "jax"}}]
mode = "task"
batch = 8
{matrix_options}
[[sweep]]
name = "built-in rows evaluated under the plugin"
variant = ["transformer-shared-qk", "lsh-transformer"]
n_hashes = 2
framework = "torch"
mode = "task"
batch = 8
{matrix_options}
[[sweep]]
name = "contract breakers"
variant = "transformer"
attention = ["wrong-shape", "raises"]
framework = "torch"
mode = "forward"
[[sweep]]
name = "a contract breaker evaluated"
variant = "transformer-shared-qk"
framework = "torch"
mode = "task"
batch = 8
{breaker_options}
'''
# the task every matrix row trains and is evaluated in (the contract breaker's: full, raises)
MATRIX_OPTIONS = '''[sweep.options]
task = "duplication"
steps = 10
log_every = 10
eval_batches = 1
eval_attentions = ["full", "lsh-2", "mine", "local"]'''


def test_a_plugin_attention_runs_in_the_models_and_the_table2_matrix(tmp_path, plugin):
    suite = tmp_path / "byo-models.toml"
    breaker = MATRIX_OPTIONS.replace('"lsh-2", "mine", "local"]', '"raises"]')
    suite.write_text(MODEL_SUITE.format(plugin=plugin, matrix_options=MATRIX_OPTIONS,
                                        breaker_options=breaker))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-progress",
                 "--no-compile-cache"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 + 2 + 3 + 2 + 2 + 1
    evaluated = [r for r in rows if "raises" in r["case"]["options"].get("eval_attentions", [])]
    assert len(evaluated) == 1 and evaluated[0]["status"] == "error"
    assert "my attention is broken" in evaluated[0]["error"]
    by = {(r["case"]["variant"], r["case"].get("attention"), r["case"]["framework"],
           r["case"]["mode"]): r for r in rows if r is not evaluated[0]}
    assert len(by) == len(rows) - 1
    for variant, modes in (("transformer", ("forward", "forward-backward", "train-step")),
                           ("reformer", ("train-step",))):
        for framework in ("torch", "jax"):
            for mode in modes:
                row = by[(variant, "mine", framework, mode)]
                assert row["status"] == "ok", row["error"]
                assert row["metrics"]["time_median_s"] > 0
                assert row["metrics"]["flops"] is None  # never guessed for a plugin
                builtin = Case.from_dict({**row["case"], "attention": None})
                assert row["case_id"] == Case.from_dict(row["case"]).case_id != \
                    builtin.case_id  # the attention is part of what is measured
    evals = ["full", "lsh-2", "mine", "local"]
    for train, framework in (("mine", "torch"), ("mine", "jax"), ("local", "torch")):
        row = by[("transformer-shared-qk", train, framework, "task")]
        assert row["status"] == "ok", row["error"]
        assert row["metrics"]["task_train_attention"] == train
        assert list(row["metrics"]["task_eval"]) == evals
        assert all(0 <= a <= 1 for a in row["metrics"]["task_eval"].values())
        assert row["case"]["chunk_len"] == 8  # kept: the matrix evaluates under LSH
    for variant, train in (("transformer-shared-qk", "full"), ("lsh-transformer", "lsh-2")):
        row = by[(variant, None, "torch", "task")]
        assert row["status"] == "ok", row["error"]
        assert row["metrics"]["task_train_attention"] == train
        assert list(row["metrics"]["task_eval"]) == evals
    broken = by[("transformer", "wrong-shape", "torch", "forward")]
    assert broken["status"] == "error"
    assert "attention 'wrong-shape' returned shape (1, 2, 32, 1)" in broken["error"]
    assert "my attention is broken" in by[("transformer", "raises", "torch", "forward")]["error"]

    table = tmp_path / "table2.md"
    assert main(["report", str(out), "-o", str(tmp_path / "report"), "--no-attention-pattern",
                 "--table2-markdown", str(table)]) == 0
    text = table.read_text()
    header = "| trained with | eval full | eval lsh-2 | eval local | eval mine | training |"
    assert text.count(header) == 2  # torch and JAX matrices, L=32
    for train in ("full", "lsh-2", "mine", "local"):
        assert f"\n| {train} | " in text
    assert "transformer[mine]/torch fb L=32" in (tmp_path / "report" / "index.html").read_text()
    from attnbench.report.frame import tidy_frame
    from attnbench.runs import load_source

    shown = set(tidy_frame([load_source(out)])["variant"])  # a model running it is its own line
    assert {"transformer[mine]", "reformer[mine]", "transformer-shared-qk[local]",
            "transformer-shared-qk", "lsh-transformer"} <= shown


def test_a_model_with_a_registered_exact_attention_is_the_built_in_model(plugin):
    """The registered layer sits where the built-in one does, with the same projections: with
    the same weights, a Transformer running the plugin's exact attention computes the
    Transformer's logits, in both frameworks."""
    import jax
    import torch

    from attnbench.convert import torch_to_jax
    from attnbench.jax_impl.model import language_model
    from attnbench.spec import ModelSpec
    from attnbench.torch_impl.model import LanguageModel

    variants.load_plugin(str(plugin))
    small = dict(vocab_size=16, d_model=16, n_layers=2, max_len=32)
    builtin = ModelSpec.transformer(**small).replace(
        attention=AttentionSpec(kind="full", n_heads=2, causal=True))
    mine = builtin.replace(attention=AttentionSpec(kind="custom", custom="mine", n_heads=2,
                                                   causal=True))
    torch.manual_seed(0)
    reference = LanguageModel(builtin)
    model = LanguageModel(mine)
    model.load_state_dict(reference.state_dict())  # the same parameter names and shapes
    tokens = torch.randint(0, 16, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).numpy()
        np.testing.assert_allclose(model(tokens).numpy(), expected, rtol=1e-5, atol=1e-5)
    params = torch_to_jax(reference.state_dict())
    logits = language_model(params, np.asarray(tokens), spec=mine, key=jax.random.key(0),
                            train=False)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


def test_a_task_runs_every_attention_on_the_shared_projection(plugin):
    """One set of weights for the whole matrix: a registered attention (here one registered
    with separate projections) gets the shared query-key projection in a task's models."""
    from attnbench.tasks.config import TaskConfig

    variants.load_plugin(str(plugin))
    config = TaskConfig(train_attention="mine", eval_attentions=("full", "lsh-2", "mine"),
                        steps=1)
    assert not variants.get_attention("mine").shared_qk
    spec = config.attention_spec("mine")
    assert (spec.kind, spec.custom, spec.shared_qk, spec.causal) == ("custom", "mine", True,
                                                                    True)
    assert variants.shares_qk(spec)
    with pytest.raises(ValueError, match="or a registered attention"):
        TaskConfig(eval_attentions=("full", "nobody"))
    with pytest.raises(ValueError, match="task's name for a built-in"):
        variants.register_attention("lsh-3", summary="s", torch=print)
    with pytest.raises(ValueError, match="AttentionSpec.shared_qk=True"):
        AttentionSpec(kind="lsh", shared_qk=True)


def test_the_suite_refuses_an_attention_field_that_cannot_run(tmp_path, plugin, capsys):
    def refused(sweep: str, mode: str = "forward") -> str:
        suite = tmp_path / "s.toml"
        suite.write_text(f'name = "s"\nplugins = ["{plugin}"]\n[[sweep]]\n{sweep}\n'
                         f'mode = "{mode}"\nlength = 64\n')
        assert main(["run", str(suite), "--dry-run"]) == 2
        return capsys.readouterr().err

    assert "is not a registered attention" in refused(
        'variant = "transformer"\nattention = "nobody"\nframework = "torch"')
    assert "replaces a model variant's attention" in refused(
        'variant = "lsh"\nattention = "mine"\nframework = "torch"')
    assert "not available for attention 'raises'" in refused(
        'variant = "transformer"\nattention = "raises"\nframework = "jax"')
    assert "attention 'raises' has no jax function" in refused(
        'variant = "transformer-shared-qk"\nframework = "jax"\n'
        'options = {task = "duplication", eval_attentions = ["full", "raises"]}\n'
        'chunk_len = 8', mode="task").replace("\n", " ")


def test_attention_empty_is_the_variants_own_in_sweeps_excludes_and_contracts(plugin):
    """TOML has no null: ``attention = ""`` names the model's own attention, so one sweep
    holds the Transformer beside its registered variants, and a contract or an exclusion can
    select it."""
    from attnbench.ratios import evaluate_contracts
    from attnbench.runner.suite import parse_suite

    suite = parse_suite({
        "name": "own", "plugins": [str(plugin)],
        "sweep": [{"variant": "transformer", "attention": ["", "mine"],
                   "framework": ["torch", "jax"], "mode": "forward", "length": 32}],
        "exclude": [{"attention": "", "framework": "jax"}]})
    assert [c.label() for c in suite.cases] == [
        "transformer/torch fwd L=32", "transformer[mine]/torch fwd L=32",
        "transformer[mine]/jax fwd L=32"]
    assert suite.cases[0].attention is None  # the same case as a sweep without the field
    assert suite.cases[0].case_id == parse_suite({"name": "own", "sweep": [{
        "variant": "transformer", "framework": "torch", "mode": "forward",
        "length": 32}]}).cases[0].case_id
    rows = [{"case_id": c.case_id, "case": c.to_dict(), "status": "ok",
             "metrics": {"time_median_s": 1.0 + i}} for i, c in enumerate(suite.cases)]
    [result] = evaluate_contracts(rows, [{
        "name": "mine against the Transformer's own", "metric": "time_median_s",
        "numerator": {"variant": "transformer", "attention": "mine", "framework": "torch"},
        "denominator": {"variant": "transformer", "attention": "", "framework": "torch"},
        "max_ratio": 3}])
    assert result.passed and result.ratio == 2.0, result.message
    assert result.denominator_label == "transformer/torch fwd L=32"
