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
