"""``--executor ray`` on a local Ray cluster started once for this module (2 CPUs and 2 logical
GPUs, so the GPU scheduling path runs without a GPU). Fake workers (a script in place of the
Python executable) stand in where a real case cannot misbehave on demand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.runner.case import Case
from attnbench.runner.suite import load_suite
from attnbench.runs import load_source
from tests.report.conftest import in_ci
from tests.runs import create_run, fake_python, wait_for_rows

ROOT = Path(__file__).resolve().parents[2]

try:
    import ray
except ImportError:
    if in_ci():
        raise
    pytest.skip("the 'ray' extra is not installed", allow_module_level=True)

from attnbench.runner.ray_executor import run_cases_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()



OK_RESULT = 'echo \'{"status": "ok", "error": null, "metrics": {"time_median_s": 0.01}}\''


def gpu_case(length: int, variant: str = "full-naive") -> Case:
    return Case(variant=variant, framework="torch", mode="forward", length=length,
                device="cuda", d_model=32, n_heads=2, timeout_s=60)


def test_smoke_cases_through_ray_are_the_local_runners_cases_all_ok(cluster, tmp_path):
    suite = load_suite(ROOT / "suites" / "smoke.toml")
    cases = [c for c in suite.cases if c.framework == "torch"
             and c.mode in ("forward", "forward-backward")][:4]
    assert len(cases) == 4
    store = create_run(tmp_path / "run")
    counts = run_cases_ray(cases, store, "run", ray=ray, progress=False, cpu_cases_per_node=2)
    assert counts == {"ok": 4}, [r["error"] for r in store.rows()]
    rows = load_source(store.path).rows
    assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in cases)
    for r in rows:
        assert r["metrics"]["time_median_s"] > 0 and r["metrics"]["executor"] == "ray"
        assert r["metrics"]["node_host"] and r["metrics"]["ray_node_id"]
        assert r["metrics"]["executor_cpu_cases_per_node"] == 2


def test_never_two_cases_on_one_logical_gpu_at_once(cluster, tmp_path):
    log = tmp_path / "log"
    python = fake_python(tmp_path, f'echo "start $CUDA_VISIBLE_DEVICES $(date +%s.%N)" >> {log}\n'
                                   f"sleep 0.4\n"
                                   f'echo "end $CUDA_VISIBLE_DEVICES $(date +%s.%N)" >> {log}\n'
                                   + OK_RESULT)
    # six series (one case each, so they may run in parallel) over two logical GPUs
    cases = [gpu_case(64 * (i + 1), variant) for i, variant in
             enumerate(["full-naive", "full-fused", "full-shared-qk"] * 2)]
    store = create_run(tmp_path / "run")
    counts = run_cases_ray(cases, store, "run", ray=ray, progress=False, python=python,
                           workers="cold")  # the fake is no interpreter to fork from
    assert counts == {"ok": 6}, [r["error"] for r in store.rows()]
    events = [line.split() for line in log.read_text().splitlines()]
    spans: dict[str, list[tuple[float, float]]] = {}
    open_at: dict[str, list[float]] = {}
    for kind, gpu, t in events:
        if kind == "start":
            open_at.setdefault(gpu, []).append(float(t))
        else:
            spans.setdefault(gpu, []).append((open_at[gpu].pop(0), float(t)))
    assert set(spans) <= {"0", "1"} and sum(len(s) for s in spans.values()) == 6
    for gpu, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end, f"two cases on GPU {gpu} at once: {intervals}"
    assert len(spans) == 2  # and both GPUs were used


def test_a_worker_lost_mid_case_is_an_error_row_naming_the_node(cluster, tmp_path):
    # the fake worker kills the Ray worker process running the task (its parent)
    mark = tmp_path / "killed-once"
    python = fake_python(tmp_path, f'if [ -e "{mark}" ]; then {OK_RESULT}; exit 0; fi\n'
                                   f'touch "{mark}"; kill -9 $PPID; sleep 5')
    cases = [gpu_case(64), gpu_case(128)]  # one series: the second waits for the first
    store = create_run(tmp_path / "run")
    counts = run_cases_ray(cases, store, "run", ray=ray, progress=False, python=python,
                           workers="cold")  # the fake is no interpreter to fork from
    rows = {r["case"]["length"]: r for r in store.rows()}
    assert counts == {"error": 1, "ok": 1}, rows
    assert rows[64]["status"] == "error" and "lost on node" in rows[64]["error"]
    assert rows[64]["metrics"]["node_host"] in rows[64]["error"]
    assert rows[128]["status"] == "ok"  # the sweep went on


@pytest.mark.slow
def test_a_driver_killed_mid_sweep_resumes_with_every_case_exactly_once(cluster, tmp_path):
    suite = tmp_path / "ray.toml"
    suite.write_text('name = "ray"\n[[sweep]]\nvariant = ["full-naive", "full-fused"]\n'
                     'framework = "torch"\nmode = "forward"\nlength = [32, 64, 96]\n'
                     'd_model = 16\nn_heads = 2\nthreads = 1\nmin_repeats = 1\n'
                     'max_repeats = 1\n')
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "attnbench.cli", "run", str(suite), "--out", str(out),
           "--no-progress", "--executor", "ray", "--address", cluster]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    results = out / "results.jsonl"
    wait_for_rows(results, 1, timeout_s=180)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results.read_text().count("\n")
    assert 1 <= before < 6, "the kill must land mid-sweep"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 6 and len({r["case_id"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]


def test_ray_unreachable_is_a_clear_error_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "attnbench.cli", "run", "smoke", "--out",
                           str(out), "--executor", "ray", "--address", "127.0.0.1:1"],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "cannot start or reach the Ray cluster at '127.0.0.1:1'" in done.stderr
    assert not out.exists()


def test_ray_not_installed_is_a_clear_error(monkeypatch):
    from attnbench.runner import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ray_executor.RayUnavailable, match=r"pip install 'attnbench\[ray\]'"):
        ray_executor.connect(None)
