"""The gates refuse nonsense (issue 22, class 4): ``attnbench compare`` and ``attnbench check``
given thresholds that make no sense, runs in which nothing was measured, runs from two
different machines, hostile case labels, values no measurement can have, and sample counts
that an exact test cannot afford. Each is refused or said, never judged as if it were sound.

The runs are copies of the golden runs (``tests/report/data``), their rows rewritten as the
runner writes them; the commands run in-process, so a traceback fails the test.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from attnbench.cli import main
from attnbench.compare import (
    NOT_MEASURED,
    REGRESSION,
    Thresholds,
    compare_rows,
    format_table,
    mann_whitney_u,
    smallest_p,
)
from attnbench.meta import Environment
from attnbench.ratios import evaluate_contracts
from attnbench.runner.case import Case
from tests.report.conftest import DATA

GOLDEN = DATA / "torch-cpu"


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def copy_run(tmp_path: Path, name: str, rows=None, environment=None) -> Path:
    """A copy of the golden torch run; ``rows(row) -> row`` rewrites each row, ``environment``
    updates meta.json's environment."""
    run = tmp_path / name
    shutil.copytree(GOLDEN, run)
    if rows is not None:
        (run / "results.jsonl").write_text(
            "".join(json.dumps(rows(row)) + "\n" for row in read_rows(run)))
    if environment is not None:
        meta = json.loads((run / "meta.json").read_text())
        meta["environment"] = {**meta["environment"], **environment}
        (run / "meta.json").write_text(json.dumps(meta))
    return run


def failed(status: str):
    """A row as the runner writes a case that did not finish: no measurement, the node facts."""
    def rewrite(row):
        node = {k: v for k, v in row["metrics"].items() if k.startswith("node_")}
        return {**row, "status": status, "error": f"{status}: boom", "metrics": node}
    return rewrite


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------

BAD_THRESHOLDS = [
    ("--max-time-ratio", "0", "0"), ("--max-time-ratio", "-5", "-5"),
    ("--max-time-ratio", "nan", "nan"), ("--max-time-ratio", "inf", "inf"),
    ("--max-time-ratio", "0.5", "0.5"),
    ("--max-mem-ratio", "0", "0"), ("--max-mem-ratio", "-1", "-1"),
    ("--max-mem-ratio", "nan", "nan"), ("--max-mem-ratio", "0.99", "0.99"),
    ("--alpha", "7", "7"), ("--alpha", "0", "0"), ("--alpha", "1", "1"),
    ("--alpha", "-0.05", "-0.05"), ("--alpha", "nan", "nan"),
    ("--min-time-delta-s", "-1", "-1"), ("--min-time-delta-s", "nan", "nan"),
    ("--min-time-delta-s", "inf", "inf"),
    ("--min-mem-delta-mb", "-0.5", "-0.5"), ("--min-mem-delta-mb", "nan", "nan"),
    ("--min-mem-delta-mb", "inf", "inf"),
]


@pytest.mark.parametrize("option, value, shown", BAD_THRESHOLDS,
                         ids=[f"{o}={v}" for o, v, _ in BAD_THRESHOLDS])
def test_a_threshold_that_makes_no_sense_is_refused(capsys, option, value, shown):
    assert main(["compare", str(GOLDEN), str(GOLDEN), f"{option}={value}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"attnbench compare: error: {option} {shown}: must be"), \
        captured.err
    assert captured.out == ""  # refused before anything was judged


def test_thresholds_are_validated_where_they_are_made():
    for field, value in [("max_time_ratio", 0.0), ("max_mem_ratio", math.inf),
                         ("alpha", 1.0), ("min_time_delta_s", -1e-9),
                         ("min_mem_delta_mb", math.nan), ("alpha", True), ("alpha", "0.05")]:
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} "):
            Thresholds(**{field: value})
    # the edges of each rule are allowed
    Thresholds(max_time_ratio=1, max_mem_ratio=1.0, alpha=1e-9, min_time_delta_s=0,
               min_mem_delta_mb=0.0)
    Thresholds(alpha=0.999)


# --------------------------------------------------------------------------------------------
# Nothing measured
# --------------------------------------------------------------------------------------------


def test_a_compare_in_which_every_case_failed_on_both_sides_fails(tmp_path, capsys):
    base = copy_run(tmp_path, "base", rows=failed("error"))
    head = copy_run(tmp_path, "head", rows=failed("oom"))
    assert main(["compare", str(base), str(head)]) == 1
    captured = capsys.readouterr()
    assert "attnbench compare: error: nothing was measured" in captured.err, captured.err
    n = len(read_rows(GOLDEN))
    assert f"0 unchanged, {n} not measured" in captured.out
    assert captured.out.count("not measured  ") == n  # each listed ...
    assert "error -> oom" in captured.out            # ... with its statuses
    # the same, timed out on both sides
    head = copy_run(tmp_path, "head-timeout", rows=failed("timeout"))
    timeout = copy_run(tmp_path, "base-timeout", rows=failed("timeout"))
    assert main(["compare", str(timeout), str(head)]) == 1
    assert "nothing was measured" in capsys.readouterr().err


def test_a_case_failing_on_both_sides_is_listed_but_not_a_regression(tmp_path, capsys):
    """The golden run has failed cases (timeout, oom, error, skipped) and cases with no time or
    memory (approx, task): compared with a copy of itself, those are 'not measured', the rest
    'unchanged', and the comparison passes."""
    rows = read_rows(GOLDEN)
    results = {c.case_id: c for c in compare_rows(rows, rows)}
    for row in rows:
        metrics = row["metrics"]
        measured = row["status"] == "ok" and ("time_median_s" in metrics
                                              or "mem_peak_mb" in metrics)
        c = results[row["case_id"]]
        assert c.verdict == ("unchanged" if measured else NOT_MEASURED), (c, row["status"])
        if row["status"] != "ok":
            assert row["status"] in c.reasons[0]
    assert main(["compare", str(GOLDEN), str(copy_run(tmp_path, "same-rows"))]) == 0
    out = capsys.readouterr().out
    assert "timeout  " in out and "not measured" in out


def test_a_pair_with_a_time_on_one_side_only_says_so():
    base = {"case_id": "a", "status": "ok", "case": {"variant": "a"},
            "metrics": {"time_median_s": 0.1}}
    head = {**base, "metrics": {"flop_per_s": 1e9}}
    [c] = compare_rows([base], [head])
    assert c.verdict == NOT_MEASURED
    assert "head has no time_median_s" in c.reasons[0]


# --------------------------------------------------------------------------------------------
# Values no measurement can have (a second line of defence behind the row schema)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric, value", [
    ("time_median_s", math.nan), ("time_median_s", math.inf), ("time_median_s", -0.2),
    ("time_median_s", 0.0), ("mem_peak_mb", math.inf), ("mem_peak_mb", -50.0),
    ("mem_peak_mb", math.nan)])
def test_a_value_no_measurement_can_have_is_never_unchanged_or_an_improvement(metric, value):
    good = {"case_id": "a", "status": "ok", "case": {"variant": "a"},
            "metrics": {"time_median_s": 0.1, "mem_peak_mb": 100.0}}
    bad = {**good, "metrics": {**good["metrics"], metric: value}}
    for base, head in ((good, bad), (bad, good)):
        [c] = compare_rows([base], [head])
        other = "mem_peak_mb" if metric == "time_median_s" else "time_median_s"
        assert c.verdict == "unchanged"  # judged on the other metric alone ...
        assert f"{metric} = {value!r}" in "; ".join(c.reasons), c.reasons  # ... and said
        assert other not in "; ".join(c.reasons)
    bad_only = {**bad, "metrics": {metric: value}}
    [c] = compare_rows([bad_only], [bad_only])
    assert c.verdict == NOT_MEASURED


# --------------------------------------------------------------------------------------------
# Machines
# --------------------------------------------------------------------------------------------


def test_the_machine_is_the_parts_that_decide_speed():
    env = Environment(hostname="runner-17", cpu="AMD EPYC 7B13", cpu_count=2,
                      memory_total_mb=15.6 * 1024,
                      packages={"torch": "2.13.0", "jax": None, "numpy": "2.1.0"},
                      gpu=[{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1"}],
                      python="3.11.2", threads=2)
    assert env.machine() == {"cpu": "AMD EPYC 7B13", "cpu_count": 2, "memory_total_gib": 16,
                             "gpus": ["NVIDIA H200"], "torch": "2.13.0"}
    # hostname, uuid, python and settings are not the machine
    other = Environment(hostname="runner-3", cpu="AMD EPYC 7B13", cpu_count=2,
                        memory_total_mb=15.58 * 1024,
                        packages={"torch": "2.13.0", "numpy": "2.2.0"},
                        gpu=[{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-2"}],
                        python="3.11.9", threads=1)
    assert other.machine() == env.machine()
    assert Environment().machine() == {}
    # a hostile meta.json: parts of the wrong type are not recorded, never a traceback
    assert Environment(cpu=5, cpu_count="2", memory_total_mb="lots", packages="torch",
                       gpu=7).machine() == {}


def test_a_compare_across_machines_is_refused_unless_allowed(tmp_path, capsys):
    base = copy_run(tmp_path, "base")
    head = copy_run(tmp_path, "head", environment={
        "cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpu_count": 8, "hostname": "elsewhere"})
    assert main(["compare", str(base), str(head)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith("attnbench compare: error: ") and "different machines" in err, err
    assert "cpu 'AMD EPYC 7B13' vs 'Intel(R) Xeon(R) Platinum 8480+'" in err
    assert "cpu_count 2 vs 8" in err and "hostname" not in err
    assert "--allow-other-machine" in err
    assert main(["compare", str(base), str(head), "--allow-other-machine"]) == 0
    out = capsys.readouterr().out
    table = out.index("verdict")
    assert -1 < out.find("different machines") < table, out
    assert -1 < out.find("cpu_count 2 vs 8") < table
    # the hostname alone is not another machine (CI runners of one type differ only by it)
    head = copy_run(tmp_path, "head-renamed", environment={"hostname": "ci-runner-2"})
    assert main(["compare", str(base), str(head)]) == 0
    out = capsys.readouterr().out
    assert "machine" not in out.split("verdict")[0], out


def test_another_gpu_or_framework_version_is_another_machine(tmp_path, capsys):
    gpu = copy_run(tmp_path, "gpu", environment={"gpu": [{"index": 0, "name": "NVIDIA A100"}]})
    other = copy_run(tmp_path, "other", environment={"gpu": [{"index": 0, "name": "NVIDIA H200"}],
                                                     "packages": {"torch": "2.14.0"}})
    assert main(["compare", str(gpu), str(other)]) == 2
    err = capsys.readouterr().err
    assert "gpus ['NVIDIA A100'] vs ['NVIDIA H200']" in err and "torch '2.13.0' vs '2.14.0'" in err


def test_only_the_compared_cases_frameworks_versions_make_another_machine(tmp_path, capsys):
    """The golden torch run's cases are all torch: a JAX upgrade beside them changes nothing
    they measured, a torch upgrade does."""
    base = copy_run(tmp_path, "base", environment={"packages": {"torch": "2.13.0",
                                                                "jax": "0.4.30"}})
    head = copy_run(tmp_path, "head", environment={"packages": {"torch": "2.13.0",
                                                                "jax": "0.5.0"}})
    assert main(["compare", str(base), str(head)]) == 0
    assert "machine" not in capsys.readouterr().out.split("verdict")[0]
    torch = copy_run(tmp_path, "torch", environment={"packages": {"torch": "2.14.0",
                                                                  "jax": "0.4.30"}})
    assert main(["compare", str(base), str(torch)]) == 2
    err = capsys.readouterr().err
    assert "torch '2.13.0' vs '2.14.0'" in err and "jax" not in err, err


def test_a_side_that_records_no_machine_is_said_not_refused(tmp_path, capsys):
    data = json.loads((DATA / "pytest_benchmark.json").read_text())
    data["machine_info"] = {}
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    assert main(["compare", str(DATA / "pytest_benchmark.json"), str(bare)]) == 0
    out = capsys.readouterr().out
    assert -1 < out.find("the machines cannot be compared") < out.index("verdict"), out
    assert "head records no machine" in out


# --------------------------------------------------------------------------------------------
# Many samples
# --------------------------------------------------------------------------------------------


def test_the_smallest_p_of_a_million_samples_a_side_is_cheap():
    """It was 2 / C(2e6, 1e6), an exact binomial coefficient of 600,000 digits (~30 s)."""
    assert smallest_p(10**6, 10**6) == 0.0
    assert smallest_p(1, 10**6) == pytest.approx(2 / (10**6 + 1))
    assert smallest_p(3, 3) == 0.1 and smallest_p(4, 4) == 2 / 70 and smallest_p(1, 1) == 1.0


@pytest.mark.parametrize("scipy", [True, False], ids=["scipy", "without-scipy"])
def test_a_hundred_thousand_samples_a_side_are_tested(monkeypatch, scipy):
    """3 samples against many (no ties) went to scipy's exact test, whose table of up to
    n1 * n2 / 2 entries is built in quadratic time (minutes here at 2 x 10^5, hours at 10^6):
    above 50 samples a side both tests take the normal approximation. Without scipy, the
    built-in test is one sort (it matches scipy's asymptotic p, ties included)."""
    try:
        import scipy.stats as reference
    except ImportError:
        reference = None
    if scipy and reference is None:
        pytest.skip("scipy is not installed")
    if not scipy:
        monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the built-in test
    n = 100_000

    def row(median, seed, size=n, ties=True):
        samples = median * (1 + 0.01 * np.random.default_rng(seed).standard_normal(size))
        if ties:
            samples[: size // 100] = np.round(samples[: size // 100], 4)
        return {"case_id": "a", "status": "ok", "case": {"variant": "a"},
                "metrics": {"time_median_s": float(np.median(samples)),
                            "time_samples_s": samples.tolist()}}

    base, head = row(0.1, 1), row(0.2, 2)
    [c] = compare_rows([base], [head])
    assert c.verdict == REGRESSION and c.time_p is not None and c.time_p < 1e-10
    same = row(0.1, 3)
    [c] = compare_rows([base], [same])
    assert c.verdict == "unchanged" and c.time_p is not None and c.time_p > 1e-6
    if not scipy:
        x, y = same["metrics"]["time_samples_s"], base["metrics"]["time_samples_s"]
        assert mann_whitney_u(x, y)[1] == c.time_p
        if reference is not None:
            expected = reference.mannwhitneyu(x, y, alternative="two-sided",
                                              method="asymptotic")
            assert mann_whitney_u(x, y) == pytest.approx(
                (expected.statistic, expected.pvalue), rel=1e-9)
    # 3 samples against many, no ties (where scipy's "auto" took its exact test)
    few, many = row(0.1, 4, size=3, ties=False), row(0.1, 5, ties=False)
    [c] = compare_rows([few], [many])
    assert c.time_p is not None and 0 < c.time_p <= 1
    assert reference is None or c.time_p == pytest.approx(reference.mannwhitneyu(
        many["metrics"]["time_samples_s"], few["metrics"]["time_samples_s"],
        alternative="two-sided", method="asymptotic").pvalue)


# --------------------------------------------------------------------------------------------
# Markdown from hostile labels
# --------------------------------------------------------------------------------------------


def test_markdown_cells_carry_no_html_from_a_hostile_run(tmp_path, capsys):
    hostile = "<img src=x onerror=alert(1)>"

    def rewrite(row):  # a hostile author computes the case's id too
        case = {**row["case"], "variant": f"{hostile}|a&b\nnext"}
        return {**row, "case": case, "case_id": Case.from_dict(case).case_id}

    runs = [copy_run(tmp_path, name, rows=rewrite) for name in ("evil", "evil-again")]
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        (run / "meta.json").write_text(json.dumps({**meta, "run_id": "<b>bold</b>"}))
    assert main(["compare", *map(str, runs), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "<" not in out and ">" not in out, out
    assert "&lt;img src=x onerror=alert(1)&gt;\\|a&amp;b next/torch" in out
    assert "&lt;b&gt;bold&lt;/b&gt;" in out
    # every table line still has the header's cell count
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    cells = {line.replace("\\|", "").count("|") for line in lines}
    assert len(cells) == 1, cells


def test_markdown_escapes_are_not_undone_by_a_backslash():
    from attnbench.compare import CaseComparison

    c = CaseComparison(case_id="a", label="a\\|b \\<x>", verdict="unchanged")
    table = format_table([c], "markdown")
    assert "a\\\\\\|b \\\\&lt;x&gt;" in table


# --------------------------------------------------------------------------------------------
# attnbench check: contracts on values no measurement can have
# --------------------------------------------------------------------------------------------


def contract_rows(num: float, den: float, metric: str = "time_median_s") -> list[dict]:
    """Two ok rows as the runner writes them (the golden run's own, their metric replaced)."""
    rows = {r["case"]["variant"]: r for r in read_rows(GOLDEN)
            if r["status"] == "ok" and r["case"]["mode"] == "forward-backward"
            and r["case"]["length"] == 1024 and r["case"]["variant"] in ("lsh", "full-fused")
            and r["case"].get("n_hashes") in (None, 1)}
    lsh, full = rows["lsh"], rows["full-fused"]
    return [{**lsh, "metrics": {**lsh["metrics"], metric: num}},
            {**full, "metrics": {**full["metrics"], metric: den}}]


CONTRACT = {"name": "lsh <= 0.5x full", "metric": "time_median_s",
            "numerator": {"variant": "lsh", "length": 1024, "mode": "forward-backward"},
            "denominator": {"variant": "full-fused", "length": 1024, "mode": "forward-backward"},
            "max_ratio": 0.5}


@pytest.mark.parametrize("role, value", [
    ("denominator", math.inf), ("denominator", 0.0), ("denominator", -0.3),
    ("denominator", math.nan), ("numerator", math.inf), ("numerator", 0.0),
    ("numerator", -0.01), ("numerator", math.nan)])
def test_a_contract_on_a_value_no_measurement_can_have_cannot_pass(role, value):
    good_num, good_den = 0.01, 0.1  # a ratio of 0.1 passes max 0.5
    num, den = (value, good_den) if role == "numerator" else (good_num, value)
    for contract in (CONTRACT, {**CONTRACT, "max_ratio": 1e300, "min_ratio": 1e-300}):
        [result] = evaluate_contracts(contract_rows(num, den), [contract])
        assert not result.passed, result
        assert f"{role} " in result.message and f"time_median_s = {value!r}" in result.message, \
            result.message
    assert evaluate_contracts(contract_rows(good_num, good_den), [CONTRACT])[0].passed


@pytest.mark.parametrize("change, why", [
    ({"max_ratio": "half"}, "max_ratio"), ({"max_ratio": math.inf}, "max_ratio"),
    ({"min_ratio": math.nan}, "min_ratio"), ({"max_ratio": -1}, "max_ratio"),
    ({"max_ratio": True}, "max_ratio"), ({"metric": ["time_median_s"]}, "metric"),
    ({"metric": 5}, "metric")])
def test_a_contract_from_a_hostile_meta_json_fails_naming_the_field(change, why):
    """meta.json's contracts are not the suite parser's: a bound or metric it would refuse
    fails the contract (never a traceback, never a vacuous pass)."""
    [result] = evaluate_contracts(contract_rows(0.01, 0.1), [{**CONTRACT, **change}])
    assert not result.passed and why in result.message, result


def test_a_run_compared_with_itself_fails_the_gate(tmp_path, capsys):
    """Comparing a run with itself would pass every gate and measure nothing: the table is
    shown, and the exit status is 1 as when nothing was compared."""
    run = copy_run(tmp_path, "run")
    (tmp_path / "alias").symlink_to(run)
    for head in (run, tmp_path / "alias", tmp_path / "." / "run"):
        assert main(["compare", str(run), str(head)]) == 1
        assert "are the same run" in capsys.readouterr().err
    assert main(["compare", str(run), str(copy_run(tmp_path, "copy"))]) == 0
