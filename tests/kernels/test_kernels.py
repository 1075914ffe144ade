"""``attnbench kernels``: the fused kernels compiled for a GPU on this CPU machine.

The GPU suites' configurations, compiled for sm_90 by the real command, must fit the chip: no
register spills, shared memory within a block's limit. The cubins it writes are read again
with cuobjdump here, independently of the command's own parse.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="compiling the kernels needs Triton (attnbench[test])")

from attnbench.kernels import compile as kc  # noqa: E402
from attnbench.kernels.command import format_table, problems  # noqa: E402
from attnbench.kernels.configs import KernelConfig, gpu_suites, suite_configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run_kernels(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "attnbench.cli", "kernels", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=900)


def test_suite_configs_are_the_gpu_suites_fused_cases():
    configs = suite_configs()
    assert {"gpu-check", "gpu-long", "paper-speed-gpu"} <= set(gpu_suites())
    # gpu-check runs bfloat16 and float32 (causal), gpu-long float32 without the causal mask
    for framework in ("torch", "jax"):
        for dtype, causal in (("bfloat16", True), ("float32", True), ("float32", False)):
            assert KernelConfig(framework, dtype, 64, 64, 64, causal) in configs
    assert all(c.chunk_len == 64 and c.d_head == 64 for c in configs)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels")
    result = run_kernels("--arch", "sm_90", "--out", str(out))
    return result, out


def test_gpu_suites_fit_sm90(compiled):
    result, out = compiled
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "kernels.jsonl").read_text().splitlines()]
    expected = {(c.framework, c.dtype, c.causal, p) for c in suite_configs() for p in c.passes}
    assert {(r["framework"], r["dtype"], r["causal"], r["pass"]) for r in rows} == expected
    for row in rows:
        assert row["arch"] == "sm_90" and row["accepted"], row
        assert row["spill_bytes"] == 0, row
        assert 0 < row["shared_bytes"] <= 227 * 1024, row
        assert 0 < row["registers"] <= 255, row
        assert problems(row) == []
    assert "spill B" in result.stdout and "triton" in result.stdout and "pallas" in result.stdout


def test_cubins_agree_with_cuobjdump(compiled):
    _, out = compiled
    rows = [json.loads(line) for line in (out / "kernels.jsonl").read_text().splitlines()]
    for row in rows:
        text = subprocess.run([kc.cuobjdump_path(), "--dump-resource-usage",
                               str(out / row["cubin"])], capture_output=True, text=True,
                              check=True).stdout
        usage = re.search(r"REG:(\d+) STACK:(\d+)", text)
        assert (int(usage[1]), int(usage[2])) == (row["registers"], row["spill_bytes"]), row


def test_problems_name_what_does_not_fit():
    row = {"arch": "sm_80", "spill_bytes": 24, "shared_bytes": 170 * 1024, "registers": 255}
    assert problems(row) == ["spills 24 B/thread", "shared 170 KB > 163 KB"]
    assert problems({"error": "out of resource: shared memory"})[0].startswith("does not compile")
    table = format_table([{"kernel": "triton", "pass": "forward", "dtype": "float32",
                           "chunk_len": 64, "d_head": 64, "d_v": 64, "causal": True,
                           "num_warps": 4, "num_stages": 2, "compile_s": 1.0, "accepted": True,
                           **row}])
    assert "NO: spills 24 B/thread, shared 170 KB > 163 KB" in table


def test_missing_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(kc.ToolchainMissing, match="Triton's compiler is not installed"):
        kc.cuobjdump_path()


def test_bad_arch_and_unwritable_out(tmp_path):
    result = run_kernels("--arch", "sm_70")
    assert result.returncode == 2 and "invalid choice: 'sm_70'" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_kernels("--out", str(blocker / "sub"))
    assert result.returncode == 2 and f"cannot write {blocker / 'sub'}" in result.stderr
