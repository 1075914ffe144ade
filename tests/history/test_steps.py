"""attnbench.history.steps: the change detector on one series."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnbench.history.model import HIGHER, IMPROVEMENT, LOWER, REGRESSION, Point
from attnbench.history.steps import DEFAULT_THRESHOLD, detect_steps, point_weights


def series(levels, *, noise=0.01, seed=0, band=0.02, samples=7, runs=1, unstable=(),
           bands=None, series_id=7):
    """Points with the given true level per commit (``runs`` runs each), relative noise
    ``noise``, a band of relative width ``band`` (or ``bands[i]`` per point)."""
    rng = np.random.default_rng(seed)
    pts = []
    for c, level in enumerate(levels):
        for r in range(runs):
            i = c * runs + r
            v = level * math.exp(rng.normal(0, noise))
            b = band if bands is None else bands[i]
            pts.append(Point(series_id=series_id, run_id=i, position=float(c), sha=f"c{c}",
                             status="ok", value=v, lo=v * (1 - b / 2), hi=v * (1 + b / 2),
                             samples=samples, unstable=i in unstable))
    return pts


@pytest.mark.parametrize("direction, factor, kind", [
    (LOWER, 1.2, REGRESSION),      # slower
    (LOWER, 0.8, IMPROVEMENT),     # faster
    (HIGHER, 0.8, REGRESSION),     # less accurate
    (HIGHER, 1.2, IMPROVEMENT),    # more accurate
])
def test_known_step_found_at_its_place_with_kind_and_ratio(direction, factor, kind):
    pts = series([1.0] * 25 + [factor] * 20, noise=0.01, seed=1)
    steps = detect_steps(pts, direction)
    assert len(steps) == 1, steps
    s = steps[0]
    assert (s.series_id, s.before_sha, s.after_sha, s.kind) == (7, "c24", "c25", kind)
    assert s.ratio == pytest.approx(factor, rel=0.01)
    assert s.before_value == pytest.approx(1.0, rel=0.01)
    assert s.after_value == pytest.approx(factor, rel=0.01)
    assert s.ratio == pytest.approx(s.after_value / s.before_value)
    ev = s.evidence
    assert (ev["before_points"], ev["after_points"]) == (25, 20)
    assert abs(ev["z"]) > 10 and ev["p_value"] < 1e-10
    json.dumps(ev, allow_nan=False)     # JSON-able as it is


def test_flat_noisy_series_has_no_step():
    for seed in range(5):
        pts = series([1.0] * 120, noise=0.02, seed=seed)
        assert detect_steps(pts, LOWER) == [], seed


def test_failed_points_are_skipped_never_zero():
    pts = series([1.0] * 20 + [1.3] * 20, noise=0.01, seed=2)
    failed = []
    for k, (i, status) in enumerate([(5, "oom"), (12, "timeout"), (20, "error"), (21, "skipped"),
                                     (30, "error")]):
        p = pts[i]
        failed.append(Point(series_id=7, run_id=100 + k, position=p.position + 0.5,
                            sha=f"f{k}", status=status, value=None))
    # a failed point that still carries a number is not a number either
    failed.append(Point(series_id=7, run_id=200, position=10.5, sha="f9", status="error",
                        value=0.0))
    steps = detect_steps(sorted(pts + failed, key=lambda p: p.position), LOWER)
    assert [(s.before_sha, s.after_sha, s.kind) for s in steps] == [("c19", "c20", REGRESSION)]
    assert steps[0].ratio == pytest.approx(1.3, rel=0.01)
    # the failures between the two commits are named
    assert steps[0].evidence["failed_between"] == []
    gap = [Point(series_id=7, run_id=300, position=19.5, sha="g", status="oom", value=None)]
    steps = detect_steps(sorted(pts + gap, key=lambda p: p.position), LOWER)
    assert steps[0].evidence["failed_between"] == [{"sha": "g", "status": "oom"}]
    # a flat series with failures all over has no step (zeros would make many)
    flat = series([1.0] * 40, noise=0.01, seed=3)
    holes = [Point(series_id=7, run_id=400 + c, position=c + 0.5, sha=f"h{c}", status="oom",
                   value=None) for c in range(0, 40, 3)]
    assert detect_steps(sorted(flat + holes, key=lambda p: p.position), LOWER) == []
    # nothing but failures: no step, no error
    assert detect_steps(holes, LOWER) == []


def test_unstable_points_alone_cannot_make_a_step_stable_points_contradict():
    # stable runs at 1.0 all along; from commit 20 on, every other run is unstable at 1.4
    levels = [1.0] * 20 + [1.0, 1.4] * 10
    late_odd = {i for i in range(20, 40) if i % 2}
    pts = series(levels, noise=0.01, seed=4, unstable=late_odd)
    assert detect_steps(pts, LOWER) == []
    # the same numbers as stable runs make steps: the mark is what kept them out
    same = detect_steps(series(levels, noise=0.01, seed=4), LOWER)
    assert same and same[0].kind == REGRESSION and same[0].after_sha in ("c20", "c21")
    # unstable runs that no stable run contradicts still count (weakly): a 30% step
    all_late = set(range(20, 40))
    steps = detect_steps(series([1.0] * 20 + [1.3] * 20, noise=0.01, seed=4,
                                unstable=all_late), LOWER)
    assert len(steps) == 1 and steps[0].evidence["unstable_after"] == 20


def test_a_wide_band_point_counts_less_than_a_narrow_band_one():
    # after the step, runs alternate 1.2 and 1.3: the level follows the narrow-band ones
    levels = [1.0] * 20 + [1.2, 1.3] * 6
    narrow, wide = 0.005, 0.08
    bands_a = [0.02] * 20 + [narrow, wide] * 6     # 1.2 narrow, 1.3 wide
    bands_b = [0.02] * 20 + [wide, narrow] * 6     # the other way round
    (sa,) = detect_steps(series(levels, noise=0.002, seed=5, bands=bands_a), LOWER)
    (sb,) = detect_steps(series(levels, noise=0.002, seed=5, bands=bands_b), LOWER)
    assert 1.2 <= sa.after_value < 1.22
    assert 1.28 < sb.after_value <= 1.3
    w = point_weights(series(levels, noise=0.002, seed=5, bands=bands_a))
    assert w[20] > 10 * w[21]                      # narrow vs wide
    assert w[0] == pytest.approx(1.0)              # the median band weighs 1


def test_point_weights_unknown_band_unstable_and_failed():
    pts = series([1.0] * 5, band=0.02)
    pts[1] = Point(series_id=7, run_id=1, position=1.0, sha="c1", status="ok", value=1.0)
    pts[2] = Point(series_id=7, run_id=2, position=2.0, sha="c2", status="ok", value=1.0,
                   lo=0.99, hi=1.01, samples=7, unstable=True)
    pts[3] = Point(series_id=7, run_id=3, position=3.0, sha="c3", status="timeout", value=None)
    w = point_weights(pts)
    assert w[1] == pytest.approx(1.0)              # unknown band: the median weight
    assert w[2] == pytest.approx(0.1 * w[0])       # unstable: a tenth
    assert w[3] is None


def test_repeated_runs_of_one_commit_are_one_level():
    pts = series([1.0] * 6 + [1.15] * 6, noise=0.01, seed=6, runs=4)
    steps = detect_steps(pts, LOWER)
    assert [(s.before_sha, s.after_sha) for s in steps] == [("c5", "c6")]
    ev = steps[0].evidence
    assert (ev["before_points"], ev["before_commits"], ev["after_commits"]) == (24, 6, 6)
    assert steps[0].ratio == pytest.approx(1.15, rel=0.01)
    # a step is never put between two runs of one commit, even when they disagree
    for seed in range(5):
        pts = series([1.0] * 6 + [1.3] * 6, noise=0.01, seed=seed, runs=3)
        mixed = [Point(series_id=7, run_id=p.run_id, position=p.position, sha=p.sha,
                       status="ok", value=p.value * (1.3 if p.sha == "c5" and p.run_id % 3 == 2
                                                     else 1), lo=p.lo, hi=p.hi, samples=7)
                 for p in pts]
        for s in detect_steps(mixed, LOWER):
            assert s.before_sha != s.after_sha
    # all runs of a single commit: nothing to compare
    assert detect_steps(series([1.0], noise=0.05, runs=30), LOWER) == []


def test_a_thousand_point_series():
    levels = [1.0] * 300 + [1.1] * 400 + [0.9] * 300
    pts = series(levels, noise=0.02, seed=7, unstable=set(range(0, 1000, 9)))
    steps = detect_steps(pts, LOWER)
    got = [(int(s.after_sha[1:]), s.kind) for s in steps]
    assert len(got) == 2, got
    assert abs(got[0][0] - 300) <= 2 and got[0][1] == REGRESSION
    assert abs(got[1][0] - 700) <= 2 and got[1][1] == IMPROVEMENT
    assert steps[1].ratio == pytest.approx(0.9 / 1.1, rel=0.02)


def test_a_two_run_excursion_is_no_step_but_two_new_runs_at_the_end_are():
    spike = series([1.0] * 20 + [1.3] * 2 + [1.0] * 20, noise=0.01, seed=8)
    assert detect_steps(spike, LOWER) == []
    assert len(detect_steps(spike, LOWER, max_excursion=0)) == 2
    newest = series([1.0] * 20 + [1.3] * 2, noise=0.01, seed=8)
    assert [(s.after_sha, s.kind) for s in detect_steps(newest, LOWER)] == [("c20", REGRESSION)]
    # one new run is not yet a level
    assert detect_steps(series([1.0] * 20 + [1.3], noise=0.01, seed=8), LOWER) == []


def test_threshold_is_the_smallest_step_reported():
    pts = series([1.0] * 30 + [1.02] * 30, noise=0.001, seed=9)
    assert detect_steps(pts, LOWER) == []                    # 2% < the default
    assert DEFAULT_THRESHOLD > 0.02
    (s,) = detect_steps(pts, LOWER, threshold=0.01)
    assert s.after_sha == "c30" and s.ratio == pytest.approx(1.02, rel=0.002)


def test_deterministic_and_non_positive_series():
    # a memory peak: the same number every run, then 10% more
    mem = [Point(series_id=1, run_id=i, position=float(i), sha=f"c{i}", status="ok",
                 value=100.0 if i < 10 else 110.0) for i in range(20)]
    (s,) = detect_steps(mem, LOWER)
    assert (s.after_sha, s.kind, s.ratio) == ("c10", REGRESSION, pytest.approx(1.1))
    # an accuracy that falls to zero: fitted on the values, not their logs
    acc = [Point(series_id=2, run_id=i, position=float(i), sha=f"c{i}", status="ok",
                 value=(0.9 + 0.001 * (i % 3)) if i < 10 else 0.0) for i in range(20)]
    (s,) = detect_steps(acc, HIGHER)
    assert (s.after_sha, s.kind, s.evidence["space"]) == ("c10", REGRESSION, "linear")
    assert s.after_value == pytest.approx(0.0, abs=1e-9) and s.ratio == pytest.approx(0.0)


def test_bad_input():
    assert detect_steps([], LOWER) == []
    assert detect_steps(series([1.0, 2.0]), LOWER) == []       # too short for two levels
    with pytest.raises(ValueError, match="direction"):
        detect_steps(series([1.0] * 10), "faster")
    with pytest.raises(ValueError, match="threshold"):
        detect_steps(series([1.0] * 10), LOWER, threshold=-0.1)
    with pytest.raises(ValueError, match="several series"):
        detect_steps(series([1.0] * 5) + series([1.0] * 5, series_id=8), LOWER)
