"""Derived numbers on constructed frames with known answers."""

import pytest

from attnbench.meta import RunMeta
from attnbench.report import derive
from attnbench.report.frame import tidy_frame
from attnbench.runs import Source
from tests.report.conftest import require_report_extra

require_report_extra()


def frame_of(rows):
    from pathlib import Path

    return tidy_frame([Source(path=Path("x"), kind="run", meta=RunMeta(run_id="r"), rows=rows)])


def row(variant, length, status="ok", n_hashes=None, **metrics):
    return {"run_id": "r", "case_id": f"{variant}{length}{n_hashes}", "status": status,
            "metrics": metrics, "case": {"variant": variant, "framework": "torch",
                                         "mode": "forward", "length": length,
                                         "device": "cpu", "n_hashes": n_hashes}}


def test_scaling_exponent_of_exact_power_laws():
    rows = [row("full-fused", n, time_median_s=3e-9 * n**2, mem_peak_mb=1e-3 * n**2)
            for n in (256, 512, 1024, 2048)]
    rows += [row("lsh", n, n_hashes=2, time_median_s=1e-5 * n, mem_peak_mb=0.01 * n)
             for n in (256, 512, 1024, 2048)]
    fits = derive.scaling_exponents(frame_of(rows))
    got = {(r["metric"], r["series"]): r["exponent"] for _, r in fits.iterrows()}
    assert got == pytest.approx({("time_median_s", "full-fused"): 2.0,
                                 ("time_median_s", "lsh h=2"): 1.0,
                                 ("mem_peak_mb", "full-fused"): 2.0,
                                 ("mem_peak_mb", "lsh h=2"): 1.0})


def test_largest_fit_and_speedup():
    rows = [row("full-fused", 1024, time_median_s=0.4), row("full-fused", 2048, "oom"),
            row("full-fused", 4096, "oom"),
            row("lsh", 1024, n_hashes=1, time_median_s=0.1),
            row("lsh", 2048, n_hashes=1, time_median_s=0.2)]
    frame = frame_of(rows)
    fits = {r["series"]: r for _, r in derive.largest_fit(frame).iterrows()}
    assert fits["full-fused"]["largest ok length"] == 1024
    assert fits["full-fused"]["first failure"] == 2048
    assert fits["full-fused"]["failure status"] == "oom"
    assert fits["lsh h=1"]["largest ok length"] == 2048
    speed = derive.speedups(frame)
    assert list(speed["series"]) == ["lsh h=1"] and list(speed["length"]) == [1024]
    assert speed["speedup"].iloc[0] == pytest.approx(4.0)


def test_largest_fit_of_series_that_failed_first_last_or_in_between():
    rows = [row("full-fused", 512, "oom"), row("full-fused", 1024, "timeout"),  # never ok
            row("lsh", 512, "timeout", n_hashes=1), row("lsh", 1024, n_hashes=1,
                                                         time_median_s=0.1),
            row("lsh", 2048, n_hashes=1, time_median_s=0.2),  # a failure below the largest ok
            row("lsh", 512, n_hashes=2, time_median_s=0.1), row("lsh", 1024, "error",
                                                                  n_hashes=2),
            row("lsh", 2048, "oom", n_hashes=2)]
    fits = derive.largest_fit(frame_of(rows))
    assert list(fits["series"]) == ["full-fused", "lsh h=1", "lsh h=2"]  # first seen first

    def value(v):  # a missing value reads as NaN in the frame
        return None if v is None or v != v else v

    got = {r["series"]: tuple(value(r[c]) for c in ("largest ok length", "first failure",
                                                     "failure status"))
           for _, r in fits.iterrows()}
    assert got == {"full-fused": (None, 512, "oom"), "lsh h=1": (2048, None, None),
                   "lsh h=2": (512, 1024, "error")}


def test_scaling_exponent_and_residual_of_a_noisy_series_match_a_least_squares_fit():
    import numpy as np

    lengths, times = [256, 512, 1024, 2048], [1.0e-3, 2.3e-3, 3.9e-3, 8.8e-3]
    rows = [row("lsh", n, n_hashes=1, time_median_s=t) for n, t in zip(lengths, times,
                                                                         strict=True)]
    rows.append(row("lsh", 4096, "oom", n_hashes=1))  # not a point of the fit
    [fit] = derive.scaling_exponents(frame_of(rows), metrics=("time_median_s",)).to_dict(
        "records")
    x, y = np.log(lengths), np.log(times)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit["exponent"] == pytest.approx(slope, rel=1e-9)
    assert fit["rms residual"] == pytest.approx(
        np.sqrt(np.mean((y - slope * x - intercept) ** 2)), rel=1e-9)
    assert (fit["lengths"], fit["points"], fit["series"]) == ("256-2048", 4, "lsh h=1")


def test_series_names_say_only_what_tells_them_apart_and_setups_the_run_and_device():
    rows = []
    for d_model in (64, 128):
        for n in (256, 512):
            r = row("lsh", n, n_hashes=1, time_median_s=0.1)
            r["case"] = {**r["case"], "d_model": d_model, "causal": True}
            r["case_id"] += str(d_model)
            rows.append(r)
    framed = derive.with_series(frame_of(rows))
    assert sorted(set(framed["series"])) == ["lsh h=1 d_model=128", "lsh h=1 d_model=64"]
    assert framed["series_key"].nunique() == 2 and set(framed["setup"]) == {"torch"}
    several = framed.assign(run_id=["a", "a", "b", "b"], device=["cpu", "cpu", "cuda", "cuda"])
    assert list(derive.with_series(several)["setup"]) == [
        "torch/cpu [a]", "torch/cpu [a]", "torch/cuda [b]", "torch/cuda [b]"]


@pytest.mark.parametrize("seeds, drawn", [(40, True), (41, False)])
def test_a_figure_of_more_series_than_can_be_told_apart_says_so(seeds, drawn):
    from attnbench.report import figures

    rows = []
    for seed in range(seeds):  # a seed sweep: each seed is its own series
        for n in (256, 512, 1024):
            r = row("lsh", n, n_hashes=1, time_median_s=1e-5 * n, mem_peak_mb=0.01 * n)
            r["case"] = {**r["case"], "seed": seed}
            r["case_id"] += f"s{seed}"
            rows.append(r)
    frame = frame_of(rows)
    what = {"time-vs-length": "series", "scaling": "fitted series"}
    for key, title, draw, caption in figures.FIGURES:
        if key not in what:
            continue
        result = figures.render_one(key, title, caption, draw, frame)
        if drawn:
            assert result.svg is not None, (key, result.note)
            continue
        assert result.svg is None and not result.empty  # a box with its note
        assert result.note == (f"Not drawn: {seeds} {what[key]} are more than one figure can "
                               "tell apart (at most 40); the tables and results.csv hold "
                               "every one."), result.note


def test_a_seed_sweep_takes_each_speedup_over_the_baseline_of_its_own_seed():
    def seeded(variant, seed, t, n_hashes=None):
        r = row(variant, 1024, n_hashes=n_hashes, time_median_s=t)
        r["case"] = {**r["case"], "seed": seed}
        r["case_id"] += f"s{seed}"
        return r

    rows = [seeded("full-fused", 0, 0.4), seeded("full-fused", 1, 0.6),
            seeded("lsh", 0, 0.1, 1), seeded("lsh", 1, 0.2, 1)]
    speed = derive.speedups(frame_of(rows))
    assert sorted(speed["speedup"]) == pytest.approx([3.0, 4.0])  # 0.6 / 0.2, 0.4 / 0.1
    # one baseline, several seeds of the variant: each over that baseline
    speed = derive.speedups(frame_of([seeded("full-fused", 0, 0.4), *rows[2:]]))
    assert sorted(speed["speedup"]) == pytest.approx([2.0, 4.0])
    assert set(speed["baseline"]) == {"full-fused"}
