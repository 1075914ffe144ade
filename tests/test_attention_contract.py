"""Bring your own attention (issue 24): a function registered with ``register_attention``,
from a plugin file outside the repository or an installed package's entry point, measured
through a suite like a built-in; a function that breaks the contract gives an error row
naming it, and the sweep goes on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from attnbench import variants
from attnbench.cli import main
from attnbench.spec import AttentionSpec
from tests.registry import forget_attentions

PLUGIN = '''
"""A user's attention, outside the repository: exact softmax attention, written by hand,
plus three that break the contract."""
import math

from attnbench.variants import register_attention


def mine_torch(q, k, v, *, causal, generator=None):
    import torch
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -1e9)
    return torch.softmax(logits, -1) @ v


def mine_jax(q, k, v, *, causal, key=None):
    import jax
    import jax.numpy as jnp
    logits = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        logits = jnp.where(jnp.triu(jnp.ones((n, n), bool), 1), -1e9, logits)
    return jax.nn.softmax(logits, -1) @ v


register_attention("mine", summary="exact attention by hand (test plugin)", torch=mine_torch,
                   jax=mine_jax)
register_attention("wrong-shape", summary="returns q[..., :1]",
                   torch=lambda q, k, v, *, causal, generator=None: v[..., :1],
                   jax=lambda q, k, v, *, causal, key=None: v[..., :1])
register_attention("wrong-dtype", summary="returns float64",
                   torch=lambda q, k, v, *, causal, generator=None: v.double())
def _raises(q, k, v, *, causal, generator=None):
    raise RuntimeError("my attention is broken")
register_attention("raises", summary="raises", torch=_raises)
'''

SUITE = '''name = "byo"
plugins = ["{plugin}"]
[defaults]
d_model = 16
n_heads = 2
length = 64
chunk_len = 32
threads = 1
warmup = 0
min_repeats = 1
max_repeats = 1
[[sweep]]
variant = ["mine", "local", "full-naive"]
framework = ["torch", "jax"]
mode = ["forward", "forward-backward"]
[[sweep]]
variant = ["mine", "local"]
framework = ["torch", "jax"]
mode = "approx"
options = {{n_seeds = 2}}
[[sweep]]
variant = ["wrong-shape", "wrong-dtype", "raises"]
framework = "torch"
mode = "forward"
'''


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "elsewhere" / "my_attention.py"
    path.parent.mkdir()
    path.write_text(PLUGIN)
    yield path
    forget_attentions("mine", "wrong-shape", "wrong-dtype", "raises")


def test_a_plugin_attention_runs_through_a_suite_and_bad_ones_are_error_rows(tmp_path, plugin,
                                                                            capsys):
    suite = tmp_path / "byo.toml"
    suite.write_text(SUITE.format(plugin=plugin))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-progress",
                 "--no-compile-cache"]) == 0
    rows = {(r["case"]["variant"], r["case"]["framework"], r["case"]["mode"]): r
            for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for variant in ("mine", "local", "full-naive"):
        for framework in ("torch", "jax"):
            for mode in ("forward", "forward-backward"):
                row = rows[(variant, framework, mode)]
                assert row["status"] == "ok", row["error"]
                assert row["metrics"]["time_median_s"] > 0
    for framework in ("torch", "jax"):  # approx: against exact attention on the same inputs
        mine, local = (rows[(v, framework, "approx")] for v in ("mine", "local"))
        assert mine["status"] == local["status"] == "ok", (mine["error"], local["error"])
        assert mine["metrics"]["approx_out_rel_err"] < 1e-5  # it is exact attention
        assert local["metrics"]["approx_out_rel_err"] > 1e-2  # half the keys are out of reach
        assert local["metrics"]["approx_recall"] is None  # the contract exposes no keys
    assert rows[("local", "torch", "approx")]["metrics"]["approx_out_rel_err"] == pytest.approx(
        rows[("local", "jax", "approx")]["metrics"]["approx_out_rel_err"], rel=1e-3)
    assert rows[("local", "torch", "forward")]["case"]["chunk_len"] == 32  # declared: kept
    assert rows[("mine", "torch", "forward")]["case"]["chunk_len"] is None  # not declared
    errors = {v: rows[(v, "torch", "forward")] for v in ("wrong-shape", "wrong-dtype",
                                                          "raises")}
    assert all(r["status"] == "error" for r in errors.values())
    assert "attention 'wrong-shape' returned shape (1, 2, 64, 1)" in \
        errors["wrong-shape"]["error"]
    assert "attention 'wrong-dtype' returned dtype torch.float64" in \
        errors["wrong-dtype"]["error"]
    assert "my attention is broken" in errors["raises"]["error"]
    # the report's error-vs-time view holds the registered attentions beside exact attention
    from attnbench.report.figures import error_vs_time
    from attnbench.report.frame import tidy_frame
    from attnbench.runs import load_source

    figure = error_vs_time(tidy_frame([load_source(out)]))
    drawn = {t.get_text() for ax in figure.axes for t in ax.get_legend().get_texts()}
    assert {"mine", "local", "full-naive"} <= drawn
    capsys.readouterr()
    assert main(["list"]) == 0  # listing runs no plugin: only the built-in local shows
    listed = capsys.readouterr().out
    assert "local" in listed and "forward,forward-backward,approx" in listed


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
name = "the plugin in the Transformer and Reformer stacks"
variant = ["transformer", "reformer"]
attention = "mine"
framework = ["torch", "jax"]
mode = ["forward", "forward-backward", "train-step"]
[[sweep]]
name = "a matrix with the plugin's row and column"
variant = "transformer-shared-qk"
attention = ["mine", "local"]
framework = ["torch", "jax"]
mode = "task"
batch = 8
[sweep.options]
task = "duplication"
steps = 20
log_every = 10
eval_batches = 1
eval_attentions = ["full", "lsh-2", "mine", "local"]
[[sweep]]
name = "built-in rows evaluated under the plugin"
variant = ["transformer-shared-qk", "lsh-transformer"]
n_hashes = 2
framework = "torch"
mode = "task"
batch = 8
[sweep.options]
task = "duplication"
steps = 20
log_every = 10
eval_batches = 1
eval_attentions = ["full", "lsh-2", "mine", "local"]
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
[sweep.options]
task = "duplication"
steps = 10
log_every = 10
eval_batches = 1
eval_attentions = ["full", "raises"]
'''


def test_a_plugin_attention_runs_in_the_models_and_the_table2_matrix(tmp_path, plugin):
    suite = tmp_path / "byo-models.toml"
    suite.write_text(MODEL_SUITE.format(plugin=plugin))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-progress",
                 "--no-compile-cache"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 + 4 + 2 + 2 + 1
    evaluated = [r for r in rows if "raises" in r["case"]["options"].get("eval_attentions", [])]
    assert len(evaluated) == 1 and evaluated[0]["status"] == "error"
    assert "my attention is broken" in evaluated[0]["error"]
    by = {(r["case"]["variant"], r["case"].get("attention"), r["case"]["framework"],
           r["case"]["mode"]): r for r in rows if r is not evaluated[0]}
    assert len(by) == len(rows) - 1
    for variant in ("transformer", "reformer"):
        for framework in ("torch", "jax"):
            for mode in ("forward", "forward-backward", "train-step"):
                row = by[(variant, "mine", framework, mode)]
                assert row["status"] == "ok", row["error"]
                assert row["metrics"]["time_median_s"] > 0
                assert row["metrics"]["flops"] is None  # never guessed for a plugin
                assert row["case_id"] != by.get((variant, None, framework, mode), {}).get(
                    "case_id")
    evals = ["full", "lsh-2", "mine", "local"]
    for train in ("mine", "local"):
        for framework in ("torch", "jax"):
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


def test_register_attention_refuses_nonsense():
    with pytest.raises(ValueError, match="give a torch or a jax function"):
        variants.register_attention("nothing", summary="s")
    with pytest.raises(ValueError, match="name 'a b'"):
        variants.register_attention("a b", summary="s", torch=print)
    with pytest.raises(ValueError, match="not callable"):
        variants.register_attention("x", summary="s", torch=5)
    with pytest.raises(ValueError, match="the name of a variant"):
        variants.register_attention("lsh", summary="s", torch=print)
    with pytest.raises(ValueError, match="already registered"):
        variants.register_attention("local", summary="another", torch=print)


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "zoo_pkg").mkdir(parents=True)
    (site / "zoo_pkg" / "__init__.py").write_text(
        "from attnbench.variants import register_attention\n"
        "def register():\n"
        "    register_attention('entry-point-attn', summary='from an installed package',\n"
        "                       torch=lambda q, k, v, *, causal, generator=None: v)\n")
    dist = site / "zoo_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[attnbench.attentions]\nzoo = zoo_pkg:register\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(variants, "_entry_points_loaded", False)
    try:
        assert variants.get_variant("entry-point-attn").frameworks == ("torch",)
        assert variants.get_variant("entry-point-attn").modes == variants.LAYER_MODES
    finally:
        forget_attentions("entry-point-attn")
        sys.modules.pop("zoo_pkg", None)


def test_local_over_one_chunk_is_the_full_layer_in_both_frameworks():
    """The custom layer has the built-in projections around the function: with one chunk
    covering the length, local attention is exact, so the layer is the full layer."""
    import torch

    from attnbench.convert import torch_to_jax
    from attnbench.jax_impl.custom_attention import custom_self_attention
    from attnbench.jax_impl.full_attention import full_self_attention
    from attnbench.torch_impl.model import make_attention

    local = AttentionSpec(kind="custom", custom="local", n_heads=2, causal=True, chunk_len=32)
    full = AttentionSpec(kind="full", n_heads=2, causal=True)
    torch.manual_seed(0)
    layer = make_attention(16, local)
    reference = make_attention(16, full)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        expected = reference(x)
        np.testing.assert_allclose(layer(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    params = torch_to_jax(layer.state_dict())
    out = custom_self_attention(params, np.asarray(x), spec=local)
    np.testing.assert_allclose(np.asarray(out), expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(full_self_attention(params, np.asarray(x), spec=full)),
                               expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_local_over_one_chunk_approximates_exact_attention_exactly(framework):
    import importlib

    module = importlib.import_module(f"attnbench.{framework}_impl.approximation")
    spec = AttentionSpec(kind="custom", custom="local", n_heads=2, causal=True, chunk_len=64)
    result = module.measure_approximation(attention=spec, d_model=16, length=64, batch=1,
                                          inputs="random", n_clusters=8, n_seeds=2, seed=0,
                                          device="cpu", dtype="float32")
    assert result["approx_out_rel_err"] < 1e-5 and result["approx_grad_rel_err"] < 1e-4
    assert result["approx_recall"] is None and result["approx_n_seeds"] == 2


def test_a_custom_spec_names_its_attention():
    with pytest.raises(ValueError, match="AttentionSpec.custom=None"):
        AttentionSpec(kind="custom")
    with pytest.raises(ValueError, match="AttentionSpec.custom='local'"):
        AttentionSpec(kind="full", custom="local")


def test_the_suite_refuses_a_mode_the_attention_lacks(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[[sweep]]\nvariant = "local"\nframework = "torch"\n'
                     'mode = "train-step"\nlength = 64\n')
    assert main(["run", str(suite), "--dry-run"]) == 2
    assert "mode" in capsys.readouterr().err


def test_example_plugin_loads_as_a_suite_would(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "favor_plus.py"
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "s"\nplugins = ["{example}"]\n[[sweep]]\nvariant = "favor+"\n'
                     'framework = ["torch", "jax"]\nmode = "forward"\nlength = 64\n')
    try:
        assert main(["run", str(suite), "--dry-run"]) == 0
        assert variants.get_variant("favor+").frameworks == ("torch", "jax")
    finally:
        forget_attentions("favor+")
