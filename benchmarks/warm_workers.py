"""What warm workers and the compile cache save: suites run cold, warm and warm again.

For each suite (default: smoke and quickstart), runs ``attnbench run`` three times into fresh
directories, in this order, and prints the wall time of each and the median harness overhead
per case and framework (``overhead_s``: a timed case's wall time minus its warm-up and timed
calls, i.e. process start, imports, building and compiling the step):

- ``cold``: fresh interpreters, no compile cache (the reference behaviour, as before warm
  workers);
- ``warm, empty cache``: warm workers, a new compile cache (a first run);
- ``warm, cached``: the same again (a repeated run or resume: JAX loads compiled code).

    python benchmarks/warm_workers.py [--suite smoke --suite quickstart] [--out FILE.json]

Run it on an otherwise idle machine: it measures wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

CONDITIONS = {
    "cold": ["--cold", "--no-compile-cache"],
    "warm, empty cache": ["--compile-cache", "{cache}"],
    "warm, cached": ["--compile-cache", "{cache}"],
}


def run_suite(suite: str, args: list[str], out: Path) -> float:
    cmd = [sys.executable, "-m", "attnbench.cli", "run", suite, "--out", str(out), "--fresh",
           "--no-progress", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr[-2000:]}")
    return wall


def overheads(results: Path) -> dict[str, dict]:
    """Median overhead_s per framework over the run's ok timed rows, and their statuses."""
    per: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        if "overhead_s" in row["metrics"]:
            per.setdefault(row["case"]["framework"], []).append(row["metrics"]["overhead_s"])
    return {"statuses": statuses,
            "overhead_median_s": {fw: median(v) for fw, v in sorted(per.items())},
            "timed_cases": {fw: len(v) for fw, v in sorted(per.items())}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", action="append", help="suite name or file (repeatable)")
    p.add_argument("--out", help="write the figures as JSON here too")
    args = p.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="attnbench-warm-bench-") as tmp:
        for suite in args.suite or ["smoke", "quickstart"]:
            cache = Path(tmp) / f"cache-{Path(suite).stem}"
            for condition, extra in CONDITIONS.items():
                out = Path(tmp) / f"{Path(suite).stem}-{condition.replace(', ', '-')}"
                wall = run_suite(suite, [a.format(cache=cache) for a in extra], out)
                figures.setdefault(suite, {})[condition] = {
                    "wall_s": wall, **overheads(out / "results.jsonl")}
                f = figures[suite][condition]
                per = ", ".join(f"{fw} {s:.2f} s" for fw, s in f["overhead_median_s"].items())
                print(f"{suite:12s} {condition:18s} wall {wall:6.1f} s; median overhead per "
                      f"case: {per}; {f['statuses']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
