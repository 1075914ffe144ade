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
