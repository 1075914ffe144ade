"""The attn_benchmark fixture (attnbench.pytest_plugin) inside real pytest runs.

Inner runs use pytester in-process (torch and JAX are imported once) at tiny sizes; what they
write with --benchmark-json is checked against values computed here independently.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.measure import work
from attnbench.pytest_plugin import build_case
from attnbench.runner.case import Case
from attnbench.variants import get_variant
from tests.registry import PLUGIN

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

# The inner project gets the fixture as benchmarks/pytest/conftest.py does.
INNER_CONFTEST = "from attnbench.pytest_plugin import attn_benchmark  # noqa: F401\n"

INNER_BENCHMARKS = '''
from attnbench.runner.case import Case


def test_torch_lsh_from_settings(attn_benchmark):
    attn_benchmark(variant="lsh", framework="torch", mode="forward-backward", length=128,
                   d_model=32, n_heads=2, chunk_len=32, n_hashes=2, threads=1, rounds=2)
    attn_benchmark.attach_approximation(n_seeds=1)


def test_jax_full_from_case(attn_benchmark):
    attn_benchmark(Case(variant="full-naive", framework="jax", mode="forward-backward",
                        length=64, d_model=32, n_heads=2, warmup=1, min_repeats=3,
                        max_repeats=3))
'''


def _inner_project(pytester, source: str) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=source)


def test_import_loads_neither_torch_nor_jax():
    code = ("import sys, attnbench.pytest_plugin; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_build_case_fills_defaults_as_a_suite_does():
    case = build_case(variant="lsh", framework="torch", mode="forward-backward", length=128,
                      chunk_len=32)
    assert (case.n_hashes, case.n_buckets, case.d_ff) == (1, 8, None)
    model = build_case(variant="reformer", framework="jax", mode="forward", length=128)
    assert model.vocab_size is not None and model.ff_chunk_len is not None


@pytest.mark.parametrize(("settings", "named"), [
    ({"variant": "no-such-variant"}, "variant"),
    ({"variant": "lsh", "length": 100, "chunk_len": 32}, "length"),
    ({"variant": "lsh", "length": [64, 128]}, "2 cases"),
], ids=["unknown-variant", "length-not-chunk-multiple", "two-lengths"])
def test_build_case_rejects_bad_settings(settings, named):
    settings = {"framework": "torch", "mode": "forward-backward", "length": 64, **settings}
    with pytest.raises(ValueError, match=named):
        build_case(**settings)


def test_benchmark_json_carries_memory_work_case_compile_and_accuracy(pytester, tmp_path,
                                                                     monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the cases' 1, whatever OMP_NUM_THREADS this process got
    _inner_project(pytester, INNER_BENCHMARKS)
    out = tmp_path / "bench.json"
    try:
        # The inner run is not an xdist worker, even when this one is: pytest-benchmark would
        # turn itself off there (it reads PYTEST_XDIST_WORKER).
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
        result = pytester.runpytest("--benchmark-only", f"--benchmark-json={out}",
                                    "-p", "no:cacheprovider", "-p", "no:xdist")
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    result.assert_outcomes(passed=2)
    assert threads_after == 2  # the case's threads=1 did not outlive its test
    benchmarks = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert sorted(benchmarks) == ["test_jax_full_from_case", "test_torch_lsh_from_settings"]

    for name, rounds in (("test_torch_lsh_from_settings", 2), ("test_jax_full_from_case", 3)):
        bench = benchmarks[name]
        info, stats = bench["extra_info"], bench["stats"]
        case = Case.from_dict(info["case"])
        variant = get_variant(case.variant)
        assert stats["rounds"] == rounds, name
        assert (case.warmup, case.min_repeats, case.max_repeats) == (1, rounds, rounds), name
        assert bench["group"] == f"{case.framework} forward-backward L={case.length}"
        # the case's fields are also top-level, where attnbench report reads them
        assert {k: info[k] for k in ("variant", "framework", "length")} == {
            "variant": case.variant, "framework": case.framework, "length": case.length}
        assert info["case_id"] == case.case_id
        assert info["status"] == "ok"
        assert isinstance(info["mem_peak_mb"], float) and info["mem_peak_mb"] >= 0, info
        assert info["mem_method"] and info["mem_baseline_mb"] > 0
        flops, formula = work.flops(case, variant.attention, False, False)
        assert (info["flops"], info["flop_formula"]) == (flops, formula)
        assert info["tokens_per_s"] == pytest.approx(case.tokens / stats["median"])
        # the warm-up round ran before the peak reset and the first timed round
        assert info["warmup_rounds"] == 1 and info["warmup_s"] > 0.5 * stats["min"], info
        # the machine over the timed rounds, and the mark the runner's worker would give
        assert info["cpus"] and info["machine_window_s"] > 0, info
        assert isinstance(info["unstable"], bool) and isinstance(info["unstable_reasons"], list)
        assert info["unstable"] == bool(info["unstable_reasons"])

    torch_info = benchmarks["test_torch_lsh_from_settings"]["extra_info"]
    assert torch_info["n_hashes"] == 2 and torch_info["n_buckets"] == 8
    assert "compile_s" not in torch_info
    assert 0 < torch_info["approx_out_rel_err"] < 2, torch_info
    assert 0 < torch_info["approx_recall"] <= 1, torch_info
    assert torch_info["approx_n_seeds"] == 1
    assert torch_info["approx_recall_ci"] is None  # one seed: no interval (NaN is not JSON)

    jax_info = benchmarks["test_jax_full_from_case"]["extra_info"]
    assert jax_info["compile_s"] > 0 and jax_info["lower_s"] > 0, jax_info
    assert jax_info["framework_version"]

    # read back as a run, each benchmark is its case under the runner's case_id, so
    # `attnbench compare RUN bench.json` pairs them
    from attnbench.runs import load_source

    source = load_source(out)
    assert {r["case_id"]: Case.from_dict(r["case"]).case_id for r in source.rows} == {
        b["extra_info"]["case_id"]: b["extra_info"]["case_id"] for b in benchmarks.values()}


INNER_REGISTERED = '''
from pathlib import Path

from attnbench.variants import load_plugin

load_plugin(str(Path(__file__).with_name("my_attention.py")))  # registers "mine"


def test_registered_layer(attn_benchmark):
    attn_benchmark(variant="mine", framework="torch", mode="forward-backward", length=64,
                   d_model=32, n_heads=2, causal=True, threads=1, rounds=2)
    attn_benchmark.attach_approximation(n_seeds=1)


def test_registered_in_the_reformer(attn_benchmark):
    attn_benchmark(variant="reformer", attention="mine", framework="torch",
                   mode="train-step", length=64, d_model=32, n_heads=2, d_ff=32, vocab_size=16,
                   threads=1, rounds=2)
'''


def test_the_fixture_takes_a_registered_attention_as_a_layer_and_in_a_model(pytester, tmp_path,
                                                                           monkeypatch):
    pytest.importorskip("torch")
    _inner_project(pytester, INNER_REGISTERED)
    pytester.makepyfile(my_attention=PLUGIN)  # a user's plugin beside their tests
    out = tmp_path / "bench.json"
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    # in a subprocess: in-process, pytester would unload the modules the inner run imported
    # (triton's among them), and a later import of their C extensions aborts the interpreter
    result = pytester.runpytest_subprocess("--benchmark-only", f"--benchmark-json={out}",
                                           "-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=2)
    info = {b["name"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    layer, model = info["test_registered_layer"], info["test_registered_in_the_reformer"]
    assert layer["label"] == "mine/torch fb L=64" and layer["status"] == "ok"
    assert layer["approx_out_rel_err"] < 1e-5  # exact attention: no approximation error
    assert layer["approx_recall"] is None and layer["flops"] is None
    assert model["label"] == "reformer[mine]/torch train L=64" and model["status"] == "ok"
    assert model["attention"] == "mine" and model["mem_peak_mb"] >= 0


INNER_DISABLED = '''
import attnbench.pytest_plugin as plugin


def test_runs_once(attn_benchmark, monkeypatch):
    calls = []
    make_step = plugin._make_step

    def counting_make_step(case, variant):
        step = make_step(case, variant)
        run = step.run
        step.run = lambda: calls.append(1) or run()
        return step

    monkeypatch.setattr(plugin, "_make_step", counting_make_step)
    info = attn_benchmark(variant="full-naive", framework="torch", mode="forward",
                          length=64, d_model=32, n_heads=2, rounds=4, warmup_rounds=2)
    assert len(calls) == 1
    assert info["case"]["variant"] == "full-naive" and "mem_peak_mb" not in info
'''


def test_benchmark_disable_runs_the_step_once_as_a_plain_test(pytester):
    _inner_project(pytester, INNER_DISABLED)
    result = pytester.runpytest("--benchmark-disable", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixture_is_single_use_and_rejects_case_plus_settings(pytester):
    _inner_project(pytester, '''
import pytest
from attnbench.runner.case import Case


def test_case_and_settings(attn_benchmark):
    case = Case(variant="full-naive", framework="torch", mode="forward", length=64)
    with pytest.raises(TypeError, match="not both"):
        attn_benchmark(case, length=128)
    attn_benchmark(case)
    with pytest.raises(RuntimeError, match="once per test"):
        attn_benchmark(case)
''')
    result = pytester.runpytest("--benchmark-disable", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_benchmark_modules_collect_with_readable_ids_only_when_asked():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'testpaths = ["tests"]' in pyproject  # so a plain `pytest` never collects them
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "benchmarks/pytest"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    node_ids = {line for line in out.stdout.splitlines() if "::" in line}
    assert len(node_ids) == 2 * 6 * 2, out.stdout  # frameworks x variants x lengths
    for framework in ("torch", "jax"):
        module = f"benchmarks/pytest/test_{framework}_attention.py::test_forward_backward"
        for point in ("lsh-L1024-h2", "full-naive-L256", "reformer-L256-h2",
                      "transformer-L1024"):
            assert f"{module}[{point}]" in node_ids, out.stdout
