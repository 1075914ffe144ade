"""``attnbench run | list | env | export`` through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.runner.suite import load_suite
from attnbench.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def attnbench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "attnbench.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_lists_filtered_cases():
    out = attnbench("run", "smoke", "--dry-run", "--framework", "jax", "--filter", "lsh/")
    assert out.returncode == 0, out.stderr
    labels = out.stdout.splitlines()
    assert labels and all("lsh/jax" in line for line in labels)
    assert "case(s) of" in out.stderr


def test_cases_of_selects_the_other_suites_cases_by_id(tmp_path):
    """gpu_check.sh runs the headline as gpu-check's cases, in gpu-check's run directory."""
    headline = load_suite(ROOT / "suites" / "gpu-headline.toml")
    out = attnbench("run", "gpu-check", "--cases-of", "gpu-headline", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert sorted(line.split()[0] for line in out.stdout.splitlines()) == sorted(
        c.case_id for c in headline.cases)
    assert "12 case(s) of 78 in suite 'gpu-check'" in out.stderr
    out = attnbench("run", "gpu-check", "--cases-of", "gpu-headline", "--framework", "jax",
                    "--filter", "lsh/", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4 and "lsh/jax" in out.stdout
    # a case the other suite has and this one lacks is an error, never dropped quietly
    out = attnbench("run", "gpu-headline", "--cases-of", "gpu-check", "--dry-run")
    assert out.returncode == 2
    assert "--cases-of gpu-check: case c2f408e66d56 (lsh/torch fb L=4096 h=1 triton cuda " \
           "bfloat16) of suite 'gpu-check' is not in suite 'gpu-headline'" in out.stderr
    out = attnbench("run", "gpu-check", "--cases-of", str(tmp_path / "missing.toml"),
                    "--dry-run")
    assert out.returncode == 2 and "missing.toml: cannot read suite" in out.stderr


def test_a_run_after_cases_of_resumes_without_running_them_again(tmp_path):
    body = ('[[sweep]]\nvariant = "full-fused"\nframework = "torch"\nmode = "forward"\n'
            'd_model = 16\nn_heads = 2\nmin_repeats = 1\nmax_repeats = 1\nlength = {}\n')
    (tmp_path / "big.toml").write_text('name = "big"\n' + body.format("[64, 128]"))
    (tmp_path / "first.toml").write_text('name = "first"\n' + body.format("128"))
    out_dir = tmp_path / "run"
    first = attnbench("run", str(tmp_path / "big.toml"), "--cases-of",
                      str(tmp_path / "first.toml"), "--out", str(out_dir), "--no-progress")
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["case"]["length"] for r in rows] == [128]
    rest = attnbench("run", str(tmp_path / "big.toml"), "--out", str(out_dir), "--no-progress")
    assert rest.returncode == 0, rest.stderr
    assert "(1 case(s) done)" in rest.stderr
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["case"]["length"] for r in rows) == [64, 128]
    assert all(r["status"] == "ok" for r in rows)


def test_bad_suite_exits_2_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[sweep]]\nvariant = "lsh"\nframework = "torch"\n'
                   'mode = "forward"\nlength = 64\nchunk_len = 48\n')
    out = attnbench("run", str(bad), "--dry-run")
    assert out.returncode == 2
    assert f"{bad}: sweep[0].length: 64 must be a multiple of chunk_len=48" in out.stderr


def test_a_different_suite_in_the_same_directory_is_refused(tmp_path):
    def suite(lengths):
        path = tmp_path / "s.toml"
        path.write_text(f'name = "s"\n[[sweep]]\nvariant = "full-fused"\nframework = "torch"\n'
                        f'mode = "forward"\nlength = {lengths}\nd_model = 16\nn_heads = 2\n'
                        'threads = 1\nmin_repeats = 1\nmax_repeats = 1\n')
        return str(path)

    out_dir = str(tmp_path / "run")
    first = attnbench("run", suite([32]), "--out", out_dir, "--no-progress")
    assert first.returncode == 0, first.stderr
    again = attnbench("run", suite([32, 64]), "--out", out_dir, "--no-progress")
    assert again.returncode == 2 and "different version of suite 's'" in again.stderr
    fresh = attnbench("run", suite([32, 64]), "--out", out_dir, "--fresh", "--no-progress")
    assert fresh.returncode == 0, fresh.stderr
    assert len(Path(out_dir, "results.jsonl").read_text().splitlines()) == 2
    assert len(list(tmp_path.glob("run.old-*"))) == 1


def test_a_directory_that_is_not_a_run_is_refused_before_anything_runs(tmp_path):
    """A run never writes into something else's directory, nor gives orphaned rows a new
    meta (another run id and environment) of its own."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.csv").write_text("someone else's numbers\n")
    (foreign / "notes.txt").write_text("keep\n")
    out = attnbench("run", "smoke", "--out", str(foreign), "--no-progress")
    assert out.returncode == 2 and "not empty and not a run" in out.stderr, out.stderr
    assert (foreign / "results.csv").read_text() == "someone else's numbers\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "results.csv"]
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "results.jsonl").write_text('{"case_id": "a"}\n')
    out = attnbench("run", "smoke", "--out", str(orphan), "--no-progress")
    assert out.returncode == 2 and "results.jsonl but no meta.json" in out.stderr, out.stderr
    assert not (orphan / "meta.json").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = attnbench("run", "smoke", "--out", str(a_file), "--no-progress")
    assert out.returncode == 2 and "is not a directory" in out.stderr, out.stderr


@pytest.mark.parametrize("option, rule", [
    (["--timeout", "-1"], "--timeout -1.0: must be a positive, finite number"),
    (["--timeout", "0"], "--timeout 0.0: must be a positive, finite number"),
    (["--timeout", "nan"], "--timeout nan: must be a positive, finite number"),
    (["--memory-limit", "-5"], "--memory-limit -5: must be an integer >= 1"),
    (["--memory-limit", "0"], "--memory-limit 0: must be an integer >= 1"),
    (["--device", "cuda:abc"], "--device 'cuda:abc': must be cpu, cuda or cuda:N"),
    (["--device", "tpu"], "--device 'tpu': must be cpu, cuda or cuda:N"),
    (["--retry", "ok"], "--retry: 'ok': a comma-separated list of oom, timeout, error, skipped"),
])
def test_command_line_settings_are_checked_like_suite_fields(option, rule, tmp_path):
    out = attnbench("run", "smoke", "--out", str(tmp_path / "run"), *option)
    assert out.returncode == 2 and rule in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_list_and_env():
    listed = attnbench("list")
    assert listed.returncode == 0
    assert "LSH kernels (case field kernel): auto" in listed.stdout
    for name in ("full-naive", "full-fused", "full-shared-qk", "lsh", "reformer", "transformer",
                 "quickstart", "paper-speed", "smoke"):
        assert name in listed.stdout
    env = attnbench("env", "--no-frameworks")
    facts = json.loads(env.stdout)
    assert facts["python"] == sys.version.split()[0] and "packages" in facts


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path):
    """Every variant, framework and mode at tiny sizes, each in a real worker: all ok."""
    out_dir = tmp_path / "smoke"
    out = attnbench("run", "smoke", "--out", str(out_dir), "--no-progress", timeout=1200)
    assert out.returncode == 0, out.stderr
    suite = load_suite(ROOT / "suites" / "smoke.toml")
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in suite.cases)
    failed = [(r["case"]["variant"], r["case"]["framework"], r["error"]) for r in rows
              if r["status"] != "ok"]
    assert not failed
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["schema"] == 1 and meta["suite"]["name"] == "smoke"
    assert meta["environment"]["packages"]["torch"] and meta["environment"]["git"]
    for r in rows:
        assert set(r) >= {"schema", "run_id", "case_id", "case", "status", "error", "metrics",
                          "started_at", "wall_s"}
        m = r["metrics"]
        if r["case"]["mode"] in ("forward", "forward-backward", "train-step"):
            assert m["time_median_s"] > 0 and len(m["time_samples_s"]) == m["time_repeats"]
            assert m["mem_peak_mb"] is not None and m["mem_analytic_mb"] > 0
            assert m["flops"] > 0 and m["tokens_per_s"] > 0
            if r["case"]["framework"] == "jax":
                assert m["compile_s"] > 0
            # the LSH kernel that ran, on the CPU the portable core; None without LSH
            hashed = r["case"]["n_hashes"] is not None
            assert m["kernel"] == ("portable" if hashed else None), (r["case"], m["kernel"])
            variant = VARIANTS[r["case"]["variant"]]
            fused = variant.attention == "full" and variant.impl == "fused"
            expected = {"torch": "cpu", "jax": "xla"}[r["case"]["framework"]] if fused else None
            assert m["full_attention_kernel"] == expected, r["case"]
        elif r["case"]["mode"] == "approx":
            assert 0 <= m["approx_recall"] <= 1
        else:
            assert set(m["task_eval"]) == {"full", "lsh-2"}
    csv_text = (out_dir / "results.csv").read_text()
    assert len(csv_text.splitlines()) == len(rows) + 1
    # The report of this real run shows its commit and threads, and writes the same CSV.
    report = attnbench("report", str(out_dir), "--no-attention-pattern", timeout=600)
    assert report.returncode == 0, report.stderr
    assert (out_dir / "results.csv").read_text() == csv_text
    from attnbench.measure.environment import git_commit
    from attnbench.report.tables import runs_table
    from attnbench.runs import load_source

    table = runs_table([load_source(out_dir)])
    [cells] = table.rows
    shown = dict(zip(table.columns, cells, strict=True))
    assert shown["commit"] == git_commit().short
    threads = {r["metrics"]["threads_used"] for r in rows if "threads_used" in r["metrics"]}
    assert threads and shown["threads"] == ", ".join(map(str, sorted(threads)))
    page = (out_dir / "index.html").read_text()
    assert f"<td>{git_commit().short}</td>" in page


def test_a_sweep_in_which_no_case_ran_ok_exits_1_and_keeps_its_rows(tmp_path, plugin):
    """A sweep that measured nothing is not a success; one ok case is."""
    suite = tmp_path / "broken.toml"
    suite.write_text(f'name = "broken"\nplugins = ["{plugin}"]\n[[sweep]]\n'
                     'variant = ["raises", "wrong-shape"]\nframework = "torch"\n'
                     'mode = "forward"\nlength = 32\nd_model = 16\nn_heads = 2\n'
                     'min_repeats = 1\nmax_repeats = 1\n')
    out = attnbench("run", str(suite), "--out", str(tmp_path / "run"), "--no-progress")
    assert out.returncode == 1, out.stderr
    assert "no case ran ok" in out.stderr
    rows = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert [json.loads(r)["status"] for r in rows] == ["error", "error"]
    suite.write_text(suite.read_text().replace('"wrong-shape"]', '"wrong-shape", "mine"]'))
    out = attnbench("run", str(suite), "--out", str(tmp_path / "run2"), "--no-progress")
    assert out.returncode == 0, out.stderr


def test_runs_started_in_the_same_second_get_different_ids():
    """Two nodes starting one suite in the same second: one id would make the history take
    the second run for the first one resumed (and replace its points)."""
    import datetime as dt
    import re

    from attnbench.runner.command import unique_stamp

    now = dt.datetime(2026, 12, 4, 7, 41, 18, tzinfo=dt.UTC)
    stamps = [unique_stamp(now) for _ in range(20)]
    assert all(re.fullmatch(r"20261204-074118-[0-9a-f]{8}", s) for s in stamps), stamps
    assert len(set(stamps)) == 20
