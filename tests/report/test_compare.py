"""`attnbench compare` on constructed runs with known answers."""

import argparse

import numpy as np
import pytest

from attnbench import compare
from attnbench.compare import (
    IMPROVEMENT,
    ONLY_BASE,
    ONLY_HEAD,
    REGRESSION,
    UNCHANGED,
    Thresholds,
    compare_rows,
    mann_whitney_u,
)
from attnbench.meta import Environment, RunMeta
from attnbench.store import RunStore
from tests.runs import create_run


def timed_row(case_id, median, mem=100.0, status="ok", n=10, spread=0.01, seed=0):
    rng = np.random.default_rng(seed)
    samples = [float(median * (1 + spread * x)) for x in rng.standard_normal(n)]
    metrics = {"time_median_s": float(np.median(samples)), "time_samples_s": samples,
               "mem_peak_mb": mem} if status == "ok" else {}
    return {"case_id": case_id, "status": status, "metrics": metrics,
            "error": None if status == "ok" else "boom",
            "case": {"variant": case_id, "framework": "torch", "mode": "forward-backward",
                     "length": 1024}}


def verdicts(base, head, **thresholds):
    return {c.case_id: c.verdict for c in compare_rows(base, head, Thresholds(**thresholds))}


def test_a_two_fold_slowdown_is_caught():
    result = verdicts([timed_row("a", 0.1, seed=1)], [timed_row("a", 0.2, seed=2)])
    assert result == {"a": REGRESSION}


def test_noise_within_the_threshold_is_not():
    # 3 % slower with 1 % noise: significant, but below the 10 % minimum effect
    result = verdicts([timed_row("a", 0.100, seed=1)], [timed_row("a", 0.103, seed=2)])
    assert result == {"a": UNCHANGED}


def test_same_distribution_with_large_noise_is_not_a_regression():
    # 40 % noise: medians can differ by more than 10 % by chance; the U test says no
    base = [timed_row(f"c{i}", 0.1, spread=0.4, seed=i) for i in range(20)]
    head = [timed_row(f"c{i}", 0.1, spread=0.4, seed=100 + i) for i in range(20)]
    comparisons = compare_rows(base, head)
    big = [c for c in comparisons if c.time_ratio > 1.1]
    assert big, "the test needs cases whose medians differ by chance"
    assert all(c.verdict != REGRESSION for c in big), [(c.time_ratio, c.time_p) for c in big]


def test_memory_regression_is_caught_and_small_changes_are_not():
    base = [timed_row("a", 0.1, mem=100.0), timed_row("b", 0.1, mem=100.0),
            timed_row("c", 0.1, mem=0.2)]
    head = [timed_row("a", 0.1, mem=120.0, seed=1), timed_row("b", 0.1, mem=103.0, seed=1),
            timed_row("c", 0.1, mem=0.5, seed=1)]  # x2.5 but 0.3 MiB: below the minimum delta
    assert verdicts(base, head) == {"a": REGRESSION, "b": UNCHANGED, "c": UNCHANGED}
    assert verdicts(base, head, max_mem_ratio=1.25)["a"] == UNCHANGED


def test_speedup_and_memory_saving_are_improvements():
    base = [timed_row("a", 0.2), timed_row("b", 0.1, mem=200.0)]
    head = [timed_row("a", 0.1, seed=3), timed_row("b", 0.1, mem=100.0, seed=3)]
    assert verdicts(base, head) == {"a": IMPROVEMENT, "b": IMPROVEMENT}


def test_status_change_ok_to_oom_is_a_regression_and_back_an_improvement():
    base = [timed_row("a", 0.1), timed_row("b", 0.1, status="oom")]
    head = [timed_row("a", 0.1, status="oom"), timed_row("b", 0.1)]
    result = compare_rows(base, head)
    by_id = {c.case_id: c for c in result}
    assert by_id["a"].verdict == REGRESSION and "ok -> oom" in by_id["a"].reasons[0]
    assert by_id["b"].verdict == IMPROVEMENT


def test_one_sided_cases_are_listed():
    result = verdicts([timed_row("a", 0.1), timed_row("gone", 0.1)],
                      [timed_row("a", 0.1), timed_row("new", 0.1)])
    assert result == {"a": UNCHANGED, "gone": ONLY_BASE, "new": ONLY_HEAD}


def test_too_few_samples_fall_back_to_the_ratio():
    # 3 against 3 repeats: the U test can never reach p < 0.05, so the ratio decides
    [c] = compare_rows([timed_row("a", 0.1, n=3)], [timed_row("a", 0.2, n=3, seed=1)])
    assert c.verdict == REGRESSION and c.time_p is None
    assert "too few samples" in c.reasons[0]


def test_regression_needs_significance_when_the_samples_allow_it():
    # medians 20 % apart, but the samples overlap completely: not significant
    base = timed_row("a", 0.1, n=8)
    head = dict(base, metrics={**base["metrics"], "time_median_s": 0.12})
    [c] = compare_rows([base], [head])
    assert c.time_p == pytest.approx(1.0) and c.verdict == UNCHANGED


@pytest.mark.parametrize("x, y, u, p", [
    # hand-computed: complete separation of 4 vs 4 -> U = 0, p = 2 / C(8, 4) = 2/70
    ([1, 2, 3, 4], [5, 6, 7, 8], 0, 2 / 70),
    # U = 1 (one inversion) -> P(U <= 1) = 2/70, two-sided 4/70
    ([1, 2, 3, 5], [4, 6, 7, 8], 1, 4 / 70),
    ([1, 2, 3], [4, 5, 6], 0, 0.1),
])
def test_mann_whitney_exact_values(x, y, u, p):
    got_u, got_p = mann_whitney_u(x, y)
    assert got_u == u and got_p == pytest.approx(p)


def test_mann_whitney_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for n1, n2, shift in [(5, 7, 1.0), (12, 15, 0.3), (30, 25, 0.0), (6, 40, 1.0)]:
        x, y = list(rng.normal(0, 1, n1)), list(rng.normal(shift, 1, n2))
        expected = scipy_stats.mannwhitneyu(x, y, alternative="two-sided")
        assert mann_whitney_u(x, y) == pytest.approx((expected.statistic, expected.pvalue))
    ties = ([1, 1, 2, 2, 3, 3, 3], [2, 3, 3, 4, 4, 4, 5])
    expected = scipy_stats.mannwhitneyu(*ties, alternative="two-sided")
    assert mann_whitney_u(*ties) == pytest.approx((expected.statistic, expected.pvalue))


def write_run(path, rows):
    store = create_run(path)
    for row in rows:
        store.append({"run_id": path.name, **row})
    return str(path)


def run_compare(*argv):
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.run(parser.parse_args([str(a) for a in argv]))


def test_command_exit_status_and_markdown_table(tmp_path, capsys):
    base = write_run(tmp_path / "base", [timed_row("a", 0.1), timed_row("b", 0.1)])
    slow = write_run(tmp_path / "slow", [timed_row("a", 0.2, seed=1), timed_row("b", 0.1)])
    same = write_run(tmp_path / "same", [timed_row("a", 0.1, seed=1), timed_row("b", 0.1)])
    assert run_compare(base, same) == 0
    assert run_compare(base, slow, "--format", "markdown", "-o", tmp_path / "t.md") == 1
    out = capsys.readouterr().out
    assert "| regression | a/torch fb L=1024 |" in out
    assert "1 regression, 0 improvements, 0 inconclusive, 1 unchanged" in out
    assert (tmp_path / "t.md").read_text().count("\n| ") >= 3
    # a looser threshold lets the 2x slowdown through
    assert run_compare(base, slow, "--max-time-ratio", "2.5") == 0


def test_command_missing_cases(tmp_path, capsys):
    base = write_run(tmp_path / "base", [timed_row("a", 0.1), timed_row("gone", 0.1)])
    head = write_run(tmp_path / "head", [timed_row("a", 0.1)])
    assert run_compare(base, head) == 0
    assert "only in base" in capsys.readouterr().out
    assert run_compare(base, head, "--fail-on-missing") == 1
    assert run_compare(base, tmp_path / "nope") == 2


def test_compare_pytest_benchmark_files(data_dir, tmp_path, capsys):
    import json

    data = json.loads((data_dir / "pytest_benchmark.json").read_text())
    for bench in data["benchmarks"]:
        if bench["extra_info"]["variant"] == "lsh":
            bench["stats"]["data"] = [2 * s for s in bench["stats"]["data"]]
            bench["stats"]["median"] *= 2
    head = tmp_path / "head.json"
    head.write_text(json.dumps(data))
    assert run_compare(data_dir / "pytest_benchmark.json", head) == 1
    out = capsys.readouterr().out
    assert out.count("regression  lsh/torch") == 3


def test_a_run_pairs_with_pytest_benchmark_output_of_the_same_cases(data_dir, tmp_path,
                                                                     capsys):
    """attnbench's fixture records each benchmark's case and case_id: pair by them."""
    import json

    bench_file = data_dir / "pytest_benchmark.json"
    benches = json.loads(bench_file.read_text())["benchmarks"]
    rows = []
    for bench in benches:
        extra = bench["extra_info"]
        rows.append({"case_id": extra["case_id"], "case": extra["case"], "status": "ok",
                     "error": None, "metrics": {"time_median_s": bench["stats"]["median"],
                                                "time_samples_s": bench["stats"]["data"],
                                                "mem_peak_mb": extra["mem_peak_mb"]}})
    # the run measured on the machine the file records (another would be refused)
    machine_info = json.loads(bench_file.read_text())["machine_info"]
    store = RunStore(tmp_path / "run")
    store.create(RunMeta(run_id="run", environment=Environment(
        cpu=machine_info["cpu"]["brand_raw"], cpu_count=machine_info["cpu"]["count"])))
    for row in rows:
        store.append({"run_id": "run", **row})
    assert run_compare(tmp_path / "run", bench_file) == 0
    out = capsys.readouterr().out
    assert f"0 regressions, 0 improvements, 0 inconclusive, {len(benches)} unchanged" in out
    assert "note:" not in out


def test_a_compare_that_pairs_nothing_fails(tmp_path, capsys):
    base = write_run(tmp_path / "base", [timed_row("a", 0.1)])
    head = write_run(tmp_path / "head", [timed_row("b", 0.1)])
    assert run_compare(base, head) == 1
    assert "nothing was compared" in capsys.readouterr().err


def unstable(row, why="machine busy: other processes used 80% of the case's CPUs [0, 1]"):
    return {**row, "metrics": {**row["metrics"], "unstable": True, "unstable_reasons": [why]}}


def test_a_time_change_with_an_unstable_side_is_inconclusive(tmp_path, capsys):
    base = [timed_row("a", 0.1), timed_row("b", 0.1), timed_row("c", 0.1, mem=100.0)]
    head = [unstable(timed_row("a", 0.2, seed=1)), timed_row("b", 0.1, seed=1),
            unstable(timed_row("c", 0.1, mem=200.0, seed=2))]
    results = {c.case_id: c for c in compare_rows(base, head)}
    assert results["a"].verdict == compare.INCONCLUSIVE
    assert "head marked unstable" in results["a"].reasons[0]
    assert "machine busy" in results["a"].reasons[0]
    assert results["b"].verdict == UNCHANGED  # stable on both sides: judged as before
    assert results["c"].verdict == REGRESSION  # memory does not depend on the load
    # the same slowdown with both sides stable is a regression
    assert compare_rows(base[:1], [timed_row("a", 0.2, seed=1)])[0].verdict == REGRESSION
    # the command: inconclusive is said, and fails only when asked to
    b = write_run(tmp_path / "base", base[:2])
    h = write_run(tmp_path / "head", head[:2])
    assert run_compare(b, h) == 0
    captured = capsys.readouterr()
    assert "1 inconclusive" in captured.out and "inconclusive: a side was marked" in captured.err
    assert run_compare(b, h, "--fail-on-inconclusive") == 1
