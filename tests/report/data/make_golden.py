"""Writes the golden runs next to this file. Run once by hand; the tests never run it.

The numbers are made up to look like a CPU sweep (full attention quadratic in length, LSH
linear, OOMs and a timeout at the long end), chosen so each figure and table has something to
show. Everything else is made by the real code: each meta.json is a ``RunMeta`` whose
environment is ``capture()``'s (host name and versions replaced, so the files say what a run
records, not this machine), each case is a real ``Case`` with its id, and the pytest-benchmark
file's extra_info has the keys attnbench's fixture writes. The committed files are the golden
files; edit this script, then re-run it.

    .venv/bin/python tests/report/data/make_golden.py
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from attnbench.measure.environment import capture, node_facts
from attnbench.measure.machine import Snapshot, machine_metrics, unstable_reasons
from attnbench.meta import Environment, GitInfo, RunMeta, SuiteInfo
from attnbench.pytest_plugin import _flat_case_fields, build_case
from attnbench.runner.case import Case

HERE = Path(__file__).parent
RNG = np.random.default_rng(20261128)
STARTED = "2026-11-28T01:19:00+00:00"


COMMIT = "2bec1f8aa0c9d3e4f5a6b7c8d9e0f1a2b3c4d5e6"


def environment(framework_versions: dict[str, str], commit: str = COMMIT) -> Environment:
    """``capture()``'s environment with this machine's identity replaced."""
    return dataclasses.replace(
        capture(probe_frameworks=False), python="3.11.2", executable="/usr/bin/python3",
        packages=framework_versions, cpu="AMD EPYC 7B13", cpu_count=2, cpu_affinity=2,
        memory_total_mb=24000.0, threads=2, git=GitInfo(sha=commit, dirty=False), gpu=None,
        env_vars={"OMP_NUM_THREADS": "2"}, hostname="bench-1", platform="Linux-6.1-x86_64")


def meta(run_id: str, suite: str, description: str, env: Environment | None,
         contracts: list | None = None, argv: list[str] | None = None) -> RunMeta:
    return RunMeta(run_id=run_id, started_at=STARTED,
                   argv=argv if argv is not None else ["attnbench", "run", "suites/golden.toml"],
                   suite=SuiteInfo(name=suite, description=description,
                                   contracts=contracts or []),
                   environment=env)


def timed_metrics(median: float, mem: float | None, analytic: float | None, tokens: int,
                  repeats: int = 7, compile_s: float | None = None,
                  others_cpu: float = 0.01) -> dict:
    """A timed case's metrics; ``others_cpu``: the CPU share other processes took (the
    machine-load metrics and the unstable mark come from the worker's own functions)."""
    samples = [round(median * (1 + 0.02 * float(x)), 7) for x in RNG.standard_normal(repeats)]
    q1, q3 = np.percentile(samples, [25, 75])
    m = {"time_median_s": float(np.median(samples)), "time_iqr_s": float(q3 - q1),
         "time_rel_iqr": float((q3 - q1) / np.median(samples)), "time_samples_s": samples,
         "time_repeats": repeats, "warmup_s": round(median * 3, 6),
         "tokens_per_s": tokens / float(np.median(samples)), "platform": "cpu",
         "device_name": "cpu", "threads_used": 2}
    if mem is not None:
        m.update(mem_peak_mb=round(mem, 2), mem_baseline_mb=310.5, mem_method="vmhwm")
    if analytic is not None:
        m["mem_analytic_mb"] = round(analytic, 2)
    if compile_s is not None:
        m.update(compile_s=compile_s, lower_s=round(compile_s / 5, 4))
    window = float(sum(samples))
    before = Snapshot(wall_s=0.0, busy_s=100.0, steal_s=0.0, own_cpu_s=1.0, own_invol=10,
                      own_vol=5)
    after = Snapshot(wall_s=window, busy_s=100.0 + window * 2 * (0.95 + others_cpu),
                     steal_s=0.0, own_cpu_s=1.0 + window * 2 * 0.95, own_invol=10 + repeats,
                     own_vol=5 + repeats)
    m.update(machine_metrics(before, after, [0, 1]), machine_load_avg=2.1)
    reasons = unstable_reasons(m, 0.05)
    m.update(unstable=bool(reasons), unstable_reasons=reasons)
    return m


def row(run_id: str, case: Case, status: str = "ok", metrics: dict | None = None,
        error: str | None = None) -> dict:
    """A row as the runner writes it; every row says its node (the JAX run ran on another)."""
    node = {**node_facts("cpu"), "node_host": "bench-2" if "jax" in run_id else "bench-1",
            "node_cpu": "AMD EPYC 7B13"}
    return {"schema": 1, "run_id": run_id, "case_id": case.case_id, "case": case.to_dict(),
            "status": status, "error": error, "metrics": {**(metrics or {}), **node},
            "started_at": STARTED, "wall_s": round(3.0 + RNG.random(), 2)}


def attention_mb(variant: str, length: int, n_hashes: int | None, heads=4, d=64) -> float:
    """The paper's Table 1 terms in MiB (float32): L x d activations, plus L^2 or L x 4c."""
    base = heads * length * d * 4
    if variant.startswith("full"):
        return (base + heads * length * length * 4) / 2**20
    return (base + heads * length * n_hashes * 4 * 32 * 4) / 2**20


def torch_run() -> tuple[dict, list[dict]]:
    run_id = "golden-torch-cpu"
    rows = []
    fb = dict(framework="torch", mode="forward-backward", suite="golden")
    for length in (256, 512, 1024, 2048, 4096, 8192):
        for variant in ("full-naive", "full-fused"):
            case = Case(variant=variant, length=length, **fb)
            t = (5e-10 if variant == "full-naive" else 2.5e-10) * length**2 * 4 + 2e-4
            mem = attention_mb(variant, length, None) * (3 if variant == "full-naive" else 1.2)
            if variant == "full-naive" and length == 4096:
                rows.append(row(run_id, case, "timeout", error="timed out after 300 s"))
            elif length == 8192:
                rows.append(row(run_id, case, "oom", error=(
                    "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator:"
                    f" not enough memory: you tried to allocate {4 * length**2 * 4} bytes.")))
            else:
                rows.append(row(run_id, case, metrics=timed_metrics(
                    t, mem, attention_mb(variant, length, None), length)))
        for n_hashes in (1, 2, 4):
            case = Case(variant="lsh", length=length, n_hashes=n_hashes, n_buckets=length // 32,
                        chunk_len=64, **fb)
            if n_hashes == 4 and length == 8192:
                rows.append(row(run_id, case, "error", error=(
                    "Traceback (most recent call last):\n  File \"worker.py\", line 88, in main\n"
                    "ValueError: length=8192: chunk buffer would exceed memory_limit_mb=4096")))
                continue
            t = 1.1e-6 * length * n_hashes ** 0.9 + 1e-3
            mem = attention_mb("lsh", length, n_hashes) * 1.5 + 0.3
            rows.append(row(run_id, case, metrics=timed_metrics(
                t, mem, attention_mb("lsh", length, n_hashes), length)))
    skipped = Case(variant="full-shared-qk", length=1024, **fb)
    rows.append(row(run_id, skipped, "skipped", error="not built in this suite (no --all)"))
    # a row with only a time (its memory meter recorded nothing)
    partial = Case(variant="lsh", length=128, n_hashes=1, n_buckets=4, chunk_len=32, **fb)
    rows.append(row(run_id, partial, metrics={"time_median_s": 0.0011}))
    # time over n_hashes x n_buckets, forward at 2048
    for n_hashes in (1, 2, 4, 8):
        for n_buckets in (16, 32, 64):
            case = Case(variant="lsh", framework="torch", mode="forward", length=2048,
                        n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=2048 // n_buckets * 2,
                        suite="golden")
            t = 1.1e-6 * 2048 * n_hashes * (1 + 32 / n_buckets) / 2
            rows.append(row(run_id, case, metrics=timed_metrics(
                t, attention_mb("lsh", 2048, n_hashes), None, 2048)))
    for variant in ("full-fused", "full-naive"):
        case = Case(variant=variant, framework="torch", mode="forward", length=2048,
                    suite="golden")
        rows.append(row(run_id, case, metrics=timed_metrics(
            (4e-10 if variant == "full-naive" else 2e-10) * 2048**2 * 4,
            attention_mb(variant, 2048, None), None, 2048)))
    # approximation quality over n_hashes x n_buckets at 1024
    for n_hashes in (1, 2, 4, 8):
        for n_buckets in (8, 16, 32):
            case = Case(variant="lsh", framework="torch", mode="approx", length=1024,
                        n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=1024 // n_buckets * 2,
                        suite="golden", options={"n_seeds": 5})
            miss = (1 - 0.55 * (8 / n_buckets) ** 0.3) ** n_hashes
            err = 0.9 * miss + 0.01
            rows.append(row(run_id, case, metrics={
                "approx_out_rel_err": round(err, 4), "approx_out_rel_err_ci": round(err / 10, 4),
                "approx_grad_rel_err": round(1.4 * err, 4),
                "approx_grad_rel_err_ci": round(err / 8, 4),
                "approx_recall": round(1 - 0.8 * miss, 4),
                "approx_recall_ci": round(0.02 * miss, 4), "approx_n_seeds": 5}))
    # models: memory over depth, reversible vs plain
    for variant in ("reformer", "transformer", "reversible-transformer"):
        for depth in (1, 2, 4, 8):
            n_hashes = 2 if variant == "reformer" else None
            case = Case(variant=variant, framework="torch", mode="train-step", length=1024,
                        depth=depth, n_hashes=n_hashes, n_buckets=32 if n_hashes else None,
                        chunk_len=64 if n_hashes else None,
                        ff_chunk_len=128 if variant == "reformer" else None, suite="golden")
            per_layer = {"reformer": 3.0, "transformer": 70.0, "reversible-transformer": 9.0}
            flat = {"reformer": 40.0, "transformer": 25.0, "reversible-transformer": 60.0}
            if variant == "transformer" and depth == 8:
                rows.append(row(run_id, case, "oom", error="memory_limit_mb=512 exceeded"))
                continue
            mem = flat[variant] + per_layer[variant] * (depth if variant == "transformer"
                                                         else 1 + 0.1 * depth)
            rows.append(row(run_id, case, metrics=timed_metrics(
                0.02 * depth * (1.6 if variant != "transformer" else 1.0), mem, None, 1024)))
    # the duplication task: train x eval accuracy
    evals = {"full": {"full": 1.0, "lsh-8": 0.91, "lsh-4": 0.87, "lsh-2": 0.70, "lsh-1": 0.48},
             "lsh-4": {"full": 0.011, "lsh-8": 0.998, "lsh-4": 0.995, "lsh-2": 0.98,
                       "lsh-1": 0.89},
             "lsh-2": {"full": 0.009, "lsh-8": 0.99, "lsh-4": 0.985, "lsh-2": 0.97,
                       "lsh-1": 0.85},
             "lsh-1": {"full": 0.008, "lsh-8": 0.97, "lsh-4": 0.96, "lsh-2": 0.91,
                       "lsh-1": 0.74}}
    # ... at two lengths (the accuracy-vs-length figure), with the plateau rule on; the
    # LSH-1 model at 512 used its budget without plateauing (not converged)
    for length, drop in ((256, 0.0), (512, 0.06)):
        for train, accs in evals.items():
            accs = {e: max(0.005, a - drop) if e != train else a for e, a in accs.items()}
            n_hashes = None if train == "full" else int(train.split("-")[1])
            case = Case(variant="full-shared-qk" if train == "full" else "lsh",
                        framework="torch", mode="task", length=length, n_hashes=n_hashes,
                        n_buckets=8 if n_hashes else None, chunk_len=32 if n_hashes else None,
                        vocab_size=128, suite="golden",
                        options={"task": "duplication", "train_attention": train,
                                 "steps": 400, "plateau_steps": 100})
            late = length == 512 and train == "lsh-1"
            final = 2.2 * (1 - accs[train]) + 0.02
            curve = [[s, round(final + 4.8 * math.exp(-s / 90), 4)]
                     for s in range(50, 401 if late else 301, 50)]
            rows.append(row(run_id, case, metrics={
                "task_accuracy": accs[train], "task_eval": accs, "task_eval_loss": final,
                "task_loss_curve": curve, "task_train_wall_s": 95.0,
                "task_steps": curve[-1][0], "task_step_budget": 400,
                "task_stop": "budget" if late else "plateau", "task_converged": not late}))
    contracts = [
        {"name": "LSH-1 fwd+bwd at 4096 <= 0.5x full", "metric": "time_median_s",
         "numerator": {"variant": "lsh", "n_hashes": 1, "length": 4096,
                       "mode": "forward-backward"},
         "denominator": {"variant": "full-fused", "length": 4096, "mode": "forward-backward"},
         "max_ratio": 0.5},
        {"name": "LSH-4 fwd+bwd at 8192 <= 0.5x full", "metric": "time_median_s",
         "numerator": {"variant": "lsh", "n_hashes": 4, "length": 8192,
                       "mode": "forward-backward"},
         "denominator": {"variant": "full-fused", "length": 2048, "mode": "forward-backward"},
         "max_ratio": 0.5},
        {"name": "LSH-4 fwd+bwd at 512 <= 0.5x full", "metric": "time_median_s",
         "numerator": {"variant": "lsh", "n_hashes": 4, "length": 512,
                       "mode": "forward-backward"},
         "denominator": {"variant": "full-fused", "length": 512, "mode": "forward-backward"},
         "max_ratio": 0.5},
        {"name": "LSH memory at 2048 below full", "metric": "mem_peak_mb",
         "numerator": {"variant": "lsh", "n_hashes": 2, "length": 2048,
                       "mode": "forward-backward"},
         "denominator": {"variant": "full-fused", "length": 2048, "mode": "forward-backward"},
         "max_ratio": 1.0},
    ]
    return meta(run_id, "golden", "Golden example run for report tests",
                environment({"torch": "2.13.0", "numpy": "2.1.0"}), contracts), rows


def jax_run() -> tuple[dict, list[dict]]:
    run_id = "golden-jax-cpu"
    rows = []
    for length in (256, 512, 1024, 2048, 4096):
        for variant, n_hashes in (("full-fused", None), ("lsh", 2)):
            case = Case(variant=variant, framework="jax", mode="forward-backward", length=length,
                        n_hashes=n_hashes, n_buckets=length // 32 if n_hashes else None,
                        chunk_len=64 if n_hashes else None, suite="golden")
            if variant == "full-fused":
                t, mem = 1.2e-10 * length**2 * 4 + 3e-4, attention_mb(variant, length, None)
            else:
                t, mem = 3.1e-6 * length + 2e-3, attention_mb("lsh", length, 2) * 1.3
            if variant == "full-fused" and length == 4096:
                rows.append(row(run_id, case, "oom", error=(
                    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 "
                    "bytes.")))
                continue
            # one case timed while another process took the CPUs: marked unstable
            metrics = timed_metrics(t, mem, attention_mb(variant, length, n_hashes), length,
                                    compile_s=round(0.3 + length / 4000, 3),
                                    others_cpu=0.6 if (variant, length) == ("lsh", 1024)
                                    else 0.01)
            metrics["xla_temp_mb"] = round(mem * 0.9, 2)
            rows.append(row(run_id, case, metrics=metrics))
    return meta(run_id, "golden", "JAX half of the golden run",
                environment({"jax": "0.7.2", "jaxlib": "0.7.2"}),
                argv=["attnbench", "run", "suites/golden.toml", "--framework", "jax"]), rows


def evil_run() -> tuple[dict, list[dict]]:
    """Text from a suite and from results that must be escaped."""
    run_id = "golden-evil"
    case = Case(variant="<img src=x onerror=alert(2)>", framework="torch",
                mode="forward-backward", length=256, suite="<script>alert(1)</script>")
    bad = Case(variant="lsh", framework="torch", mode="forward", length=512, n_hashes=1,
               n_buckets=16, chunk_len=32, suite="<script>alert(1)</script>")
    rows = [row(run_id, case, metrics=timed_metrics(0.01, 12.0, None, 256)),
            row(run_id, bad, "error", error="<script>alert(3)</script> & </td></table>")]
    contracts = [{"name": "<i>ratio</i>", "metric": "time_median_s",
                  "numerator": {"variant": "lsh"},
                  "denominator": {"variant": "<img src=x onerror=alert(2)>"},
                  "max_ratio": 1.0}]
    return meta(run_id, "<script>alert(1)</script>", "</style><b onmouseover=alert(4)>hi</b>",
                environment({"torch": "<svg onload=alert(5)>"}, "deadbeef" * 5), contracts,
                argv=["attnbench", "run", "<script>alert(6)</script>"]), rows


def write_run(name: str, run_meta: RunMeta, rows: list[dict], tail: str = "") -> None:
    path = HERE / name
    path.mkdir(exist_ok=True)
    (path / "meta.json").write_text(json.dumps(run_meta.to_dict(), indent=2, sort_keys=True)
                                    + "\n")
    with open(path / "results.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        f.write(tail)


def pytest_benchmark_file() -> dict:
    def bench(variant, length, median, extra, **settings):
        """One benchmark as attnbench's fixture records it (its extra_info keys)."""
        case = build_case(variant=variant, framework="torch", mode="forward-backward",
                          length=length, **settings)
        samples = [round(median * (1 + 0.03 * float(x)), 7) for x in RNG.standard_normal(9)]
        q1, q3 = np.percentile(samples, [25, 75])
        name = variant.replace("-", "_")
        return {"group": "forward-backward", "name": f"test_{name}[L{length}]",
                "fullname": f"benchmarks/test_layers.py::test_{name}[L{length}]",
                "params": {"length": length}, "param": f"L{length}",
                "extra_info": {**_flat_case_fields(case), "case": case.to_dict(),
                               "case_id": case.case_id, "label": case.label(), **extra,
                               "status": "ok"},
                "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5,
                            "max_time": 1.0, "min_time": 5e-06, "warmup": False},
                "stats": {"min": min(samples), "max": max(samples),
                          "mean": float(np.mean(samples)), "stddev": float(np.std(samples)),
                          "rounds": len(samples), "median": float(np.median(samples)),
                          "iqr": float(q3 - q1), "q1": float(q1), "q3": float(q3),
                          "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0",
                          "ld15iqr": min(samples), "hd15iqr": max(samples),
                          "ops": 1 / float(np.mean(samples)), "total": float(np.sum(samples)),
                          "data": samples, "iterations": 1}}
    benches = []
    for length in (512, 1024, 2048):
        benches.append(bench("lsh", length, 2.5e-6 * length, {"mem_peak_mb": length / 40},
                             n_hashes=2))
        benches.append(bench("full-fused", length, 6e-10 * length**2,
                             {"mem_peak_mb": length**2 / 2.6e5}))
    return {"machine_info": {"node": "bench-1", "processor": "x86_64", "machine": "x86_64",
                             "python_implementation": "CPython", "python_version": "3.11.2",
                             "system": "Linux", "release": "6.1.0",
                             "cpu": {"brand_raw": "AMD EPYC 7B13", "count": 2}},
            "commit_info": {"id": "2bec1f8aa", "time": "2026-11-27T20:00:00+00:00",
                            "dirty": False, "project": "attnbench", "branch": "main"},
            "benchmarks": benches, "datetime": "2026-11-28T02:00:00.000000+00:00",
            "version": "5.2.3"}


def main() -> None:
    write_run("torch-cpu", *torch_run())
    # a run killed mid-write: its last line is cut off and must be ignored
    write_run("jax-cpu", *jax_run(), tail='{"schema": 1, "run_id": "golden-jax-cpu", "cas')
    write_run("evil", *evil_run())
    write_run("empty", meta("golden-empty", "empty", "started, nothing finished",
                            environment({"torch": "2.13.0"})), [])
    (HERE / "pytest_benchmark.json").write_text(
        json.dumps(pytest_benchmark_file(), indent=2) + "\n")


if __name__ == "__main__":
    main()
