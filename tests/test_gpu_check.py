"""benchmarks/gpu_check.sh, its summaries and its kernel check, as far as a CPU machine
allows: the dry run lists the stages in order with their cases and estimates; the summary reads
a real run's store; the headline summary reads the headline's rows and the kernel checks; the
kernel check runs in the kernels' interpreters."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.runner.suite import load_suite
from tests.runner.test_command import attnbench

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_lists_the_stages_in_order_with_their_estimates():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent)
                              + ":/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # what each stage runs, in order: the headline's 12 gpu-check cases, the tests, the rest
    plan = [text.index(f"stage {k} ") for k in ("env:", "a (headline)", "b (CUDA tests)",
                                                 "c (the rest of gpu-check)")]
    assert plan == sorted(plan)
    assert "12 case(s) of 78 in suite 'gpu-check'" in text
    assert "78 case(s) of 78 in suite 'gpu-check'" in text
    for case in load_suite(ROOT / "suites" / "gpu-headline.toml").cases:
        assert f"{case.case_id}  {case.label()}" in text
    assert "gpu_kernel_check.py --framework torch" in text and "shape fp32-bidir" in text
    assert "gpu-check.tar.gz" in text
    # then the estimate, stage by stage, with its rates
    estimate = text[text.index("# gpu_check.sh: estimated time"):]
    marks = [estimate.index(f"stage {k}: ") for k in ("env", "a", "b", "c")]
    assert marks == sorted(marks)
    assert "total: ~" in estimate and "989.4 TFLOP/s" in estimate and "4.8 TB/s" in estimate
    assert "CUDA tests counted on this machine" in estimate


def test_gpu_summary_reads_a_real_run(tmp_path):
    """A CPU stand-in for a gpu-check run (same variants, a tiny length), made by the runner."""
    suite = tmp_path / "mini.toml"
    suite.write_text('''name = "mini"
[defaults]
framework = "torch"
mode = "forward-backward"
length = 4096
d_model = 64
n_heads = 2
chunk_len = 64
dtype = "bfloat16"
causal = true
min_repeats = 1
max_repeats = 2
[[sweep]]
variant = ["lsh", "full-fused"]
n_hashes = 4
''')
    run_dir = tmp_path / "run"
    out = attnbench("run", str(suite), "--out", str(run_dir), "--no-progress", timeout=300)
    assert out.returncode == 0, out.stderr
    summary = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"),
                              str(run_dir)], capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    assert "2 cases: 2 ok" in summary.stdout
    (row,) = [line for line in summary.stdout.splitlines()
              if line.startswith("| torch | bfloat16 | 4096 |")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3].endswith(" ms") and "x)" in cells[6] and cells[-1] == "portable", cells


def _append(store, case, status, seconds=None, **metrics):
    store.append({"run_id": "run", "case_id": case.case_id, "case": case.to_dict(),
                  "status": status, "error": None, "started_at": None, "wall_s": 1.0,
                  "metrics": {"time_median_s": seconds, **metrics}})


def test_headline_summary_reads_the_headline_rows_and_the_kernel_checks(tmp_path):
    """Ratios against full attention, the issue's targets, a case not run and a failed one
    said as such, and each kernel check's errors."""
    from tests.runs import create_run

    store = create_run(tmp_path / "run", suite="gpu-check")
    cases = load_suite(ROOT / "suites" / "gpu-headline.toml").cases
    pick = {(c.variant, c.framework, c.length, c.n_hashes): c for c in cases}
    for length, lsh4 in ((16384, 0.4), (65536, 0.2)):  # 0.4x meets <= 0.5x; 0.2x misses 0.1x
        _append(store, pick[("full-fused", "torch", length, None)], "ok", 0.01,
                full_attention_kernel="flash")
        _append(store, pick[("lsh", "torch", length, 1)], "ok", 0.001, kernel="triton")
        _append(store, pick[("lsh", "torch", length, 4)], "ok", 0.01 * lsh4, kernel="triton")
    _append(store, pick[("lsh", "jax", 16384, 4)], "oom")
    checks = tmp_path / "kernel_check_torch.json"
    checks.write_text(json.dumps({"ok": False, "rows": [
        {"framework": "torch", "fused_kernel": "triton", "name": "bf16-causal",
         "dtype": "bfloat16", "causal": True, "quantity": q, "fused_vs_portable": err,
         "tolerance": 0.06, "ok": err <= 0.06}
        for q, err in (("out", 0.002), ("d_qk", 0.5), ("d_v", 0.003))]}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"),
                          "--headline", str(tmp_path / "run"), "--kernel-check", str(checks),
                          "--kernel-check", str(tmp_path / "kernel_check_jax.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "12 headline cases: 5 not run, 6 ok, 1 oom" in text
    assert ("| torch | 16384 | 10.00 ms (flash) | 1.00 ms (0.100x) | 4.00 ms (0.400x) | "
            "<= 0.5x | yes | triton |") in text
    assert ("| torch | 65536 | 10.00 ms (flash) | 1.00 ms (0.100x) | 2.00 ms (0.200x) | "
            "<= 0.1x | NO | triton |") in text
    assert "| jax | 16384 | not run (-) | not run | oom | <= 0.5x | - | - |" in text
    assert "MISMATCH or ERROR" in text
    assert ("| torch | triton | bf16-causal | bfloat16 | True | 2.0e-03 | 5.0e-01 | 3.0e-03 | "
            "6e-02 | NO |") in text
    assert "kernel_check_jax.json: no result (FileNotFoundError" in text


def _kernel_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_kernel_check",
                                                  ROOT / "benchmarks" / "gpu_kernel_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kernel_check_runs_both_kernels_in_their_interpreters(tmp_path):
    """The script the GPU run starts with, on the CPU (Triton and Pallas interpreters): both
    frameworks, both shapes, every quantity within the tolerance."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_kernel_check.py"),
                          "--device", "cpu", "--shapes", "tiny", "--json",
                          str(tmp_path / "k.json")], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "k.json").read_text())
    assert data["ok"] and len(data["rows"]) == 2 * 2 * 3
    assert {(r["framework"], r["fused_kernel"]) for r in data["rows"]} == {
        ("torch", "triton"), ("jax", "pallas")}
    for r in data["rows"]:
        assert r["fused_vs_portable"] <= r["tolerance"] == 2 * {"bfloat16": 3e-2,
                                                                "float32": 1e-5}[r["dtype"]]
    assert "all checks passed" in out.stdout


def test_kernel_check_mismatch_and_failure_are_rows_and_exit_1(monkeypatch, tmp_path):
    """A tolerance nothing meets makes every row a mismatch; a framework that cannot run on
    the device is an error row, not a missing one. Exit status 1 for both."""
    k = _kernel_check_module()
    x = k.inputs(k.SHAPES["tiny"][1])
    ref = k.reference(k.SHAPES["tiny"][1], x)
    monkeypatch.setattr(k, "run_torch", lambda shape, x, kernel, device: {
        q: ref[q] * (1.001 if kernel == "triton" else 1.0) for q in k.QUANTITIES})
    monkeypatch.setattr(k, "check_platform", lambda framework, device: None)
    rows = k.check("torch", k.SHAPES["tiny"][1], "cpu", x, ref)
    assert [r["ok"] for r in rows] == [False] * 3  # 1e-3 off: over float32's 2e-5
    assert all(r["fused_vs_portable"] > r["tolerance"] for r in rows)

    def no_gpu(framework, device):
        raise RuntimeError("torch sees no CUDA device")

    monkeypatch.setattr(k, "check_platform", no_gpu)
    (row,) = k.check("torch", k.SHAPES["tiny"][0], "cuda", x, ref)
    assert not row["ok"] and row["error"] == "RuntimeError: torch sees no CUDA device"
    monkeypatch.setattr(k, "SHAPES", {"tiny": k.SHAPES["tiny"][:1]})
    assert k.main(["--framework", "torch", "--device", "cuda", "--shapes", "tiny", "--json",
                   str(tmp_path / "k.json")]) == 1
    assert json.loads((tmp_path / "k.json").read_text())["ok"] is False
