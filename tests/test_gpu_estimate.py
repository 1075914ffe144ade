"""benchmarks/gpu_estimate.py: gpu_check.sh's time on an H200 estimated from each case's FLOPs
and bytes, and the headline suite it runs first. No GPU, torch or JAX needed."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import pytest

from attnbench.measure import work
from attnbench.runner.suite import load_suite, parse_suite
from attnbench.variants import get_variant

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "suites"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_estimate",
                                                  ROOT / "benchmarks" / "gpu_estimate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


E = _module()
CHECK = load_suite(SUITES / "gpu-check.toml")
HEADLINE = load_suite(SUITES / "gpu-headline.toml")


def suite(**sweep):
    data = {"name": "t", "defaults": {"device": "cuda", "framework": "torch", "causal": True,
                                      "dtype": "bfloat16", "mode": "forward-backward"},
            "sweep": [sweep]}
    return parse_suite(data).cases


def test_headline_cases_are_gpu_check_cases_measured_the_same_way():
    """Stage a runs the headline as gpu-check's cases (--cases-of): each must be one, with the
    same repeats and budgets, so the headline suite run on its own measures the same."""
    check = {c.case_id: c for c in CHECK.cases}
    assert len(HEADLINE.cases) == 12
    for case in HEADLINE.cases:
        assert case.case_id in check, case.label()
        assert dataclasses.replace(check[case.case_id], suite=case.suite) == case
    assert {(c.variant, c.framework, c.length, c.n_hashes) for c in HEADLINE.cases} == {
        (v, f, n, h) for f in ("torch", "jax") for n in (16384, 65536)
        for v, h in (("lsh", 1), ("lsh", 4), ("full-fused", None))}
    assert {(c.dtype, c.mode, c.batch, c.d_model, c.n_heads, c.causal) for c in
            HEADLINE.cases} == {("bfloat16", "forward-backward", 1, 256, 4, True)}
    assert {c.resolved_kernel for c in HEADLINE.cases if c.variant == "lsh"} == {"triton",
                                                                                 "pallas"}


@pytest.mark.parametrize("case", CHECK.cases, ids=lambda c: c.label())
def test_terms_add_up_to_attnbench_work_model(case):
    """The estimate splits the rows' own FLOP count (work.flops) into engines; the split must
    add up to it, so a change of the work model shows here."""
    variant = get_variant(case.variant)
    expected, _ = work.flops(case, variant.attention, variant.kind == "model",
                             variant.reversible)
    terms, peak, floor = E.case_terms(case)
    assert math.isclose(sum(t.model_flops for t in terms), expected, rel_tol=1e-12)
    assert all(t.seconds(E.H200) >= 0 for t in terms) and peak >= 0 and floor > 0


def test_step_grows_with_length_and_hashes_and_the_case_costs_its_steps():
    cases = {(c.length, c.n_hashes): c
             for c in suite(variant="lsh", kernel="auto", length=[16384, 65536],
                            n_hashes=[1, 4])}
    est = {k: v for k, v in zip(cases, E.estimate_cases(list(cases.values())), strict=True)}
    for h in (1, 4):
        assert est[(65536, h)].step_s > est[(16384, h)].step_s
        assert est[(65536, h)].exec_flops > est[(16384, h)].exec_flops
        assert est[(65536, h)].bytes > est[(16384, h)].bytes
    for n in (16384, 65536):
        assert est[(n, 4)].step_s > est[(n, 1)].step_s
    e = est[(65536, 4)]
    case = e.case
    assert e.outcome == "ok"
    assert math.isclose(e.steps_s, (case.warmup + case.min_repeats) * e.step_s)
    assert math.isclose(e.seconds, e.overhead_s + e.steps_s)
    # full attention grows with the square of the length (its attention term dominates)
    full = E.estimate_cases(suite(variant="full-fused", length=[32768, 65536]))
    ratio = full[1].step_s / full[0].step_s
    assert 3.0 < ratio <= 4.0


def test_rates_set_the_estimate():
    """Halving the tensor-core peak slows a compute-bound case; a faster HBM speeds LSH
    (its sort and gathers are memory-bound); the launch floor alone bounds a tiny case."""
    (big,) = suite(variant="full-fused", length=65536)
    slow = dataclasses.replace(E.H200, tensor_tflops=E.H200.tensor_tflops / 2)
    assert E.estimate_cases([big], slow)[0].step_s > 1.8 * E.estimate_cases([big])[0].step_s
    (lsh,) = suite(variant="lsh", kernel="portable", length=65536, n_hashes=4)
    fast = dataclasses.replace(E.H200, hbm_tb_s=2 * E.H200.hbm_tb_s)
    assert E.estimate_cases([lsh], fast)[0].step_s < 0.9 * E.estimate_cases([lsh])[0].step_s
    moved = E.Term("bytes only", 0.0, 0.0, 4.8e9, "fp32", 1.0)
    assert moved.seconds(E.H200) == pytest.approx(4.8e9 / (4.8e12 * E.H200.hbm_fraction))
    (tiny,) = suite(variant="full-fused", length=256)
    assert E.estimate_cases([tiny])[0].step_s == pytest.approx(E.H200.layer_floor_ms / 1e3,
                                                               rel=0.05)


def test_a_modelled_peak_over_the_memory_is_an_oom_row_and_the_longer_lengths_are_skipped():
    cases = suite(variant="lsh", kernel="auto", n_hashes=4, length=[4096, 16384, 65536, 131072])
    peaks = [e.peak_bytes for e in E.estimate_cases(cases)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    small = dataclasses.replace(E.H200, hbm_gib=(peaks[1] + peaks[2]) / 2 / E.GIB)
    est = E.estimate_cases(cases, small)
    assert [e.outcome for e in est] == ["ok", "ok", "oom", "skipped"]
    assert est[2].steps_s == 0 and est[2].seconds == est[2].overhead_s > 0
    assert est[3].seconds == 0


def test_stages_come_in_order_hold_their_cases_and_sum_to_the_total():
    stages = E.plan(CHECK, HEADLINE, n_cuda_tests=100)
    assert [s.key for s in stages] == ["env", "a", "b", "c"]
    a, b, c = stages[1:]
    assert [e.case.case_id for e in a.cases] == [
        x.case_id for x in CHECK.cases if x.case_id in {h.case_id for h in HEADLINE.cases}]
    assert len(a.cases) + len(c.cases) == len(CHECK.cases)
    assert not {e.case.case_id for e in a.cases} & {e.case.case_id for e in c.cases}
    all_cases = sum(e.seconds for e in E.estimate_cases(CHECK.cases))
    assert math.isclose(sum(e.seconds for e in a.cases + c.cases), all_cases)
    for s in stages:
        assert math.isclose(s.seconds, sum(i.seconds for i in s.items))
    assert math.isclose(E.total_seconds(stages), sum(i.seconds for s in stages for i in s.items))
    text = E.render(stages, cases=True)
    assert f"total: ~{E._fmt(E.total_seconds(stages))} ({E.total_seconds(stages):.0f} s)" in text
    assert "989.4" in text and "4.8 TB/s" in text
    # moving the 64K cases out of the headline moves their cost from stage a to stage c
    only_16k = dataclasses.replace(HEADLINE, cases=tuple(x for x in HEADLINE.cases
                                                         if x.length == 16384))
    moved = E.plan(CHECK, only_16k, n_cuda_tests=100)
    assert moved[1].seconds < a.seconds and moved[3].seconds > c.seconds


def test_cuda_tests_stage_grows_with_the_tests_up_to_the_scripts_timeout():
    hw = E.H200
    seconds = [E.plan(CHECK, HEADLINE, n)[2].seconds - hw.archive_s for n in (10, 100, 10**4)]
    assert seconds[0] < seconds[1] <= seconds[2] == hw.tests_timeout_s
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert f"timeout -s INT -k 30 {hw.tests_timeout_s:.0f}" in script


def test_untimed_modes_have_no_estimate():
    data = {"name": "t", "sweep": [{"variant": "lsh", "framework": "torch", "mode": "approx",
                                    "length": 256}]}
    with pytest.raises(ValueError, match="not timed"):
        E.case_terms(parse_suite(data).cases[0])
