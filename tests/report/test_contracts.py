"""Same-run ratio contracts on constructed rows with known answers, and `attnbench check`."""

import argparse
import json

import pytest

from attnbench import contracts
from attnbench.contracts import evaluate_contracts
from tests.runs import create_run


def make_row(variant, length, status="ok", n_hashes=None, mode="forward-backward", **metrics):
    case = {"variant": variant, "framework": "torch", "mode": mode, "length": length,
            "n_hashes": n_hashes, "device": "cpu", "options": {"task": "dup"}}
    return {"case_id": f"{variant}-{length}-{n_hashes}-{mode}", "case": case, "status": status,
            "error": "out of memory: tried to allocate 4 GiB" if status != "ok" else None,
            "metrics": metrics}


ROWS = [make_row("lsh", 4096, n_hashes=1, time_median_s=0.2, mem_peak_mb=100.0),
        make_row("lsh", 4096, n_hashes=4, time_median_s=0.6, mem_peak_mb=300.0),
        make_row("lsh", 8192, "oom", n_hashes=4),
        make_row("full-fused", 4096, time_median_s=0.5, mem_peak_mb=1000.0),
        make_row("full-fused", 8192, time_median_s=2.0),
        make_row("full-fused", 4096, mode="forward", time_median_s=0.1)]
FULL_4096 = {"variant": "full-fused", "length": 4096, "mode": "forward-backward"}


def contract(numerator, denominator=FULL_4096, metric="time_median_s", **bounds):
    return {"name": "c", "metric": metric, "numerator": numerator, "denominator": denominator,
            **bounds}


def test_ratio_within_bound_passes_and_reports_value():
    [result] = evaluate_contracts(ROWS, [contract({"variant": "lsh", "n_hashes": 1,
                                                   "length": 4096}, max_ratio=0.5)])
    assert result.passed, result.message
    assert result.ratio == pytest.approx(0.4)
    assert "0.4" in result.message and "<= 0.5" in result.message


def test_ratio_beyond_bound_is_a_violation():
    [result] = evaluate_contracts(ROWS, [contract({"variant": "lsh", "n_hashes": 4,
                                                   "length": 4096}, max_ratio=0.5)])
    assert not result.passed
    assert result.ratio == pytest.approx(1.2)


def test_min_ratio_and_both_bounds():
    num = {"variant": "lsh", "n_hashes": 1, "length": 4096}
    results = evaluate_contracts(ROWS, [
        contract(num, metric="mem_peak_mb", min_ratio=0.2),           # 0.1 < 0.2: fails
        contract(num, metric="mem_peak_mb", min_ratio=0.05, max_ratio=0.2),  # 0.1: passes
    ])
    assert [r.passed for r in results] == [False, True]


def test_oom_numerator_is_a_violation_naming_its_status():
    [result] = evaluate_contracts(ROWS, [contract(
        {"variant": "lsh", "n_hashes": 4, "length": 8192},
        {"variant": "full-fused", "length": 8192}, max_ratio=0.5)])
    assert not result.passed
    assert "oom" in result.message and "out of memory" in result.message


def test_missing_and_ambiguous_selectors_fail_with_a_reason():
    missing, ambiguous, metric_missing = evaluate_contracts(ROWS, [
        contract({"variant": "lsh", "length": 16384}, max_ratio=1),
        contract({"variant": "lsh", "n_hashes": 1, "length": 4096},
                 {"variant": "full-fused", "length": 4096}, max_ratio=1),  # fwd and fb match
        contract({"variant": "lsh", "n_hashes": 1, "length": 4096}, metric="flops", max_ratio=1),
    ])
    assert not missing.passed and "no case matches numerator" in missing.message
    assert not ambiguous.passed and "ambiguous" in ambiguous.message
    assert "2 cases" in ambiguous.message
    assert not metric_missing.passed and "has no flops" in metric_missing.message


def test_selector_may_name_an_option():
    [result] = evaluate_contracts(ROWS, [contract(
        {"variant": "lsh", "n_hashes": 1, "length": 4096, "task": "dup"}, max_ratio=1)])
    assert result.passed, result.message


def test_no_bound_is_a_failure():
    [result] = evaluate_contracts(ROWS, [contract({"variant": "lsh", "n_hashes": 1})])
    assert not result.passed


def write_run(path, rows, contract_list):
    store = create_run(path, contracts=contract_list)
    for row in rows:
        store.append({"run_id": path.name, **row})
    return path


def check(*argv):
    parser = argparse.ArgumentParser()
    contracts.add_arguments(parser)
    return contracts.run(parser.parse_args([str(a) for a in argv]))


def test_check_command_exit_status(tmp_path, capsys):
    good = contract({"variant": "lsh", "n_hashes": 1, "length": 4096}, max_ratio=0.5)
    bad = {**contract({"variant": "lsh", "n_hashes": 4, "length": 4096}, max_ratio=0.5),
           "name": "LSH-4 at 4096 <= 0.5x full"}
    assert check(write_run(tmp_path / "good", ROWS, [good])) == 0
    assert "PASS" in capsys.readouterr().out
    assert check(write_run(tmp_path / "bad", ROWS, [good, bad])) == 1
    out = capsys.readouterr().out
    assert "FAIL  LSH-4 at 4096 <= 0.5x full" in out and "= 1.2" in out
    assert "1 passed, 1 failed" in out


def test_check_without_contracts_fails_unless_allowed(tmp_path, capsys):
    """A gate whose contracts disappeared must not pass: nothing checked is exit 1."""
    run = write_run(tmp_path / "none", ROWS, [])
    assert check(run) == 1
    assert "states no contracts: nothing was checked" in capsys.readouterr().err
    assert check(run, "--allow-no-contracts") == 0
    assert check(tmp_path / "absent") == 2


def test_check_on_the_golden_run(data_dir, capsys):
    assert check(data_dir / "torch-cpu") == 1
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and out.count("FAIL") == 2
    meta = json.loads((data_dir / "torch-cpu" / "meta.json").read_text())
    for c in meta["suite"]["contracts"]:
        assert c["name"] in out


def _rows(n: int) -> list[dict]:
    """n rows as the runner writes them: alternately LSH and full attention over lengths, with
    options holding a list (unhashable) on every third row."""
    rows = []
    for i in range(n):
        options = {"eval_attentions": ["full", "lsh-1"]} if i % 3 == 0 else {"inputs": "random"}
        rows.append({"case_id": f"{i:012x}", "status": "ok", "metrics": {"time_median_s": i + 1.0},
                     "case": {"variant": "lsh" if i % 2 else "full-fused", "framework": "torch",
                              "mode": "forward", "length": 64 * (i // 2 + 1), "causal": i % 4 == 1,
                              "n_hashes": 1 if i % 2 else None, "options": options}})
    return rows


@pytest.mark.parametrize("selector", [
    {"variant": "lsh"}, {"variant": "lsh", "length": 128}, {"length": 128, "causal": True},
    {"causal": 1}, {"inputs": "random", "length": 192}, {"eval_attentions": ["full", "lsh-1"]},
    {"eval_attentions": ["full", "lsh-1"], "length": 64}, {"n_hashes": None},
    {"variant": "nope"}, {"options": {"inputs": "random"}, "length": 256}])
def test_the_row_index_selects_what_a_scan_selects(selector):
    from attnbench.ratios import _RowIndex
    from attnbench.runner.case import selector_matches

    rows = _rows(60)
    assert _RowIndex(rows).matching(selector) == [
        r for r in rows if selector_matches(selector, r["case"])]


def test_contracts_look_at_a_few_rows_each_not_every_row(monkeypatch):
    """Checking C contracts on R rows compares each selector with its few candidates: about C
    comparisons, where scanning took C x R (2,000 contracts on 10^4 rows took minutes)."""
    from attnbench import ratios
    from attnbench.runner import case

    calls = []
    scan = case.selector_matches
    monkeypatch.setattr(case, "selector_matches", lambda s, c: calls.append(1) or scan(s, c))
    contracts = [{"name": f"c{j}", "metric": "time_median_s", "max_ratio": 10.0,
                  "numerator": {"variant": "lsh", "length": 64 * (j + 1)},
                  "denominator": {"variant": "full-fused", "length": 64 * (j + 1)}}
                 for j in range(500)]
    results = ratios.evaluate_contracts(_rows(2000), contracts)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed][:3]
    assert len(calls) <= 2 * 2 * len(contracts)  # two selectors, at most two candidates each


def test_an_ambiguous_selector_names_the_cases_apart():
    from attnbench import ratios
    from attnbench.runner.case import Case

    cases = [Case(variant="lsh", framework="torch", mode="forward", length=256, chunk_len=32,
                  n_buckets=b) for b in (8, 16)]
    cases.append(Case(variant="full-fused", framework="torch", mode="forward", length=256))
    rows = [{"case_id": c.case_id, "case": c.to_dict(), "status": "ok",
             "metrics": {"time_median_s": 1.0}} for c in cases]
    [result] = ratios.evaluate_contracts(rows, [{
        "name": "lsh below full", "metric": "time_median_s", "max_ratio": 1.0,
        "numerator": {"variant": "lsh"}, "denominator": {"variant": "full-fused"}}])
    assert not result.passed and "ambiguous" in result.message
    assert "n_buckets=8" in result.message and "n_buckets=16" in result.message, result.message
