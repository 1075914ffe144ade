"""The history's whole flow on a real git repository (issue 23's acceptance test): a clone of
this checkout with eight commits on top, one of which slows a case down on purpose; each
commit run, the runs added, the step found, confirmed by measuring both commits again, and
published.

The case is a plugin layer that sleeps (so its time is the sleep's, steady on a busy CI
machine): 40 ms for four commits, 120 ms from the fifth on. It runs with the quiet tests
(alone): ``confirm`` judges with ``compare``, which calls a change measured on a busy
machine inconclusive, as it should.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.cli import main

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''"""A layer whose forward sleeps SLEEP_S: the case the history follows."""
import time

from attnbench.variants import Variant, register_variant

SLEEP_S = {sleep}


def build(case, *, device, dtype):
    import torch

    class Sleeper(torch.nn.Module):
        def forward(self, x):
            time.sleep(SLEEP_S)
            return x * 1.0

    return Sleeper()


register_variant(Variant("sleeper", "sleeps SLEEP_S per forward (history test)", "layer",
                         "full", frameworks=("torch",), build=build))
'''
SUITE = '''name = "history-flow"
plugins = ["sleeper.py"]
[[sweep]]
variant = "sleeper"
framework = "torch"
mode = "forward"
length = 32
d_model = 16
n_heads = 2
threads = 1
warmup = 1
min_repeats = 3
max_repeats = 3
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, message: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", *files)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def history_repo(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of attnbench")
    base = tmp_path_factory.mktemp("flow")
    repo = base / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "history test")
    shas = []
    for i in range(8):
        files = {"history-note.txt": f"commit {i}\n"}
        if i == 0:
            files.update({"sleeper.py": PLUGIN.format(sleep=0.04), "history.toml": SUITE})
        if i == 4:
            files["sleeper.py"] = PLUGIN.format(sleep=0.12)  # the slowdown, on purpose
        shas.append(commit(repo, f"history test commit {i}", files))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    for i, sha in enumerate(shas):
        git(repo, "checkout", "-q", sha)
        out = subprocess.run([sys.executable, "-m", "attnbench.cli", "run", "history.toml",
                              "--out", str(base / "runs" / f"{i}"), "--no-progress",
                              "--no-compile-cache"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    git(repo, "checkout", "-q", shas[-1])
    return base, repo, shas


@pytest.mark.quiet  # confirm's runs must not be marked unstable by the parallel tests' load
def test_eight_commits_run_added_stepped_confirmed_and_published(history_repo, capsys):
    base, repo, shas = history_repo
    db = str(base / "history.sqlite")
    for i in range(8):  # every run recorded its commit and the commit's date
        meta = json.loads((base / "runs" / f"{i}" / "meta.json").read_text())
        assert meta["environment"]["git"]["sha"] == shas[i]
        assert meta["environment"]["git"]["committed_at"]
    assert main(["history", "add", str(base / "runs"), "--db", db]) == 0
    assert "8 added" in capsys.readouterr().err
    assert main(["history", "add", str(base / "runs"), "--db", db]) == 0
    assert "8 unchanged" in capsys.readouterr().err  # adding again changes nothing

    assert main(["history", "steps", "--db", db, "--repo", str(repo), "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    time_steps = [s for s in steps if s["metric"] == "time_median_s"]
    assert [(s["before"], s["after"], s["kind"]) for s in time_steps] == \
        [(shas[3], shas[4], "regression")], steps
    step = time_steps[0]
    assert 2.5 < step["ratio"] < 3.5, step

    assert main(["history", "confirm", str(step["id"]), "--db", db, "--repo", str(repo),
                 "--rounds", "2"]) == 0
    assert "confirmed" in capsys.readouterr().out
    assert main(["history", "steps", "--db", db, "--repo", str(repo), "--json"]) == 0
    again = {s["id"]: s for s in json.loads(capsys.readouterr().out)}
    assert again[step["id"]]["verdict"] == "confirmed"  # stored with the step
    assert not git(repo, "worktree", "list").count("\n")  # the worktrees are gone

    site = base / "site"
    assert main(["publish", "--db", db, "-o", str(site), "--repo", str(repo)]) == 0
    regressions = (site / "regressions.html").read_text()
    assert shas[3][:7] in regressions and shas[4][:7] in regressions
    assert "confirmed" in regressions
    assert (site / "index.html").is_file()
