"""benchmarks/gpu_check.sh and its summary, as far as a CPU machine allows: the dry run lists
the gpu-check suite and the CUDA tests it would run; the summary reads a real run's store."""

import subprocess
import sys
from pathlib import Path

from tests.runner.test_command import attnbench

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_lists_the_suite_and_the_cuda_tests():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent)
                              + ":/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "case(s) of" in out.stderr and "in suite 'gpu-check'" in out.stderr
    assert "triton cuda bfloat16" in out.stdout and "pallas cuda bfloat16" in out.stdout
    assert "tests collected" in out.stdout


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
