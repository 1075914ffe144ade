"""How long ``attnbench history add`` and ``attnbench publish`` take for a long history.

Writes N synthetic runs of a suite (default: the ``ci`` suite, 1,000 runs) with the real
writer (``RunStore``: the suite's own cases and contracts, this machine's environment, one
commit per run with its date), rows with noisy times (``time_samples_s`` per repeat), memory,
a few failures and unstable marks, and a 20% slowdown of one case from the 60% mark on; then
times, each in a fresh process: ``history add`` of all of them, ``history steps``,
``publish``, one more run added, and ``publish`` again (which rewrites only what changed).

    python benchmarks/history_scale.py --runs 1000 --out /tmp/history-scale

Prints a Markdown table; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import random
import subprocess
import sys
import time
from pathlib import Path


def write_runs(out: Path, suite_name: str, n: int, total: int,
               first: int = 0, seed: int = 0) -> list[Path]:
    from attnbench.measure.environment import capture
    from attnbench.meta import GitInfo, RunMeta, SuiteInfo
    from attnbench.runner.command import resolve_suite_path
    from attnbench.runner.suite import load_suite
    from attnbench.store import RunStore

    suite = load_suite(resolve_suite_path(suite_name))
    environment = capture(probe_frameworks=False)
    rng = random.Random(seed + first)
    base = {c.case_id: 0.001 * (1 + i) * (c.length / 512) for i, c in enumerate(suite.cases)}
    slowed = suite.cases[0].case_id
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    paths = []
    for i in range(first, first + n):
        sha = hashlib.sha1(f"commit {i}".encode()).hexdigest()
        when = (start + dt.timedelta(hours=i)).isoformat(timespec="seconds")
        git = GitInfo(sha=sha, dirty=False, committed_at=when)
        env = type(environment)(**{**environment.__dict__, "git": git})
        store = RunStore(out / f"run-{i:04d}")
        store.create(RunMeta(run_id=f"{suite.name}-{i:04d}", started_at=when, argv=["synthetic"],
                             suite=SuiteInfo(name=suite.name, description=suite.description,
                                             contracts=list(suite.contracts),
                                             n_cases=len(suite.cases)),
                             environment=env))
        for case in suite.cases:
            level = base[case.case_id] * (1.2 if case.case_id == slowed and i >= 0.6 * total
                                          else 1)
            if rng.random() < 0.01:
                store.append({"run_id": f"r{i}", "case_id": case.case_id,
                              "case": case.to_dict(), "status": rng.choice(["oom", "timeout"]),
                              "error": "synthetic failure", "metrics": {},
                              "started_at": when, "wall_s": 1.0})
                continue
            samples = [level * (1 + rng.gauss(0, 0.02)) for _ in range(7)]
            ordered = sorted(samples)
            unstable = rng.random() < 0.05
            metrics = {"time_samples_s": samples, "time_median_s": ordered[3],
                       "time_iqr_s": ordered[5] - ordered[1], "time_repeats": 7,
                       "mem_peak_mb": 10.0 * (1 + case.length / 512), "unstable": unstable,
                       "unstable_reasons": ["machine busy (synthetic)"] if unstable else []}
            store.append({"run_id": f"r{i}", "case_id": case.case_id, "case": case.to_dict(),
                          "status": "ok", "error": None, "metrics": metrics,
                          "started_at": when, "wall_s": 1.0})
        paths.append(store.path)
    return paths


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "attnbench.cli", *argv], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--suite", default="ci")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    args = parser.parse_args(argv)
    runs = str(args.out / "runs")
    write_runs(args.out / "runs", args.suite, args.runs, args.runs + 1)
    (last,) = write_runs(args.out / "one-more", args.suite, 1, args.runs + 1, first=args.runs)
    db, site = str(args.out / "history.sqlite"), str(args.out / "site")
    rows = [("history add (all runs)", timed(["history", "add", runs, "--db", db])),
            ("history add (again: unchanged)", timed(["history", "add", runs, "--db", db])),
            ("history steps", timed(["history", "steps", "--db", db])),
            ("publish", timed(["publish", "--db", db, "-o", site])),
            ("history add (one more run)", timed(["history", "add", str(last), "--db", db])),
            ("publish (after one more run)", timed(["publish", "--db", db, "-o", site]))]
    print(f"| {args.runs} runs of suite {args.suite} | wall s |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
