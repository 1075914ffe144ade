"""How well does the history's step detector find steps, and how often does it cry wolf?

Synthetic histories with known steps and noise, run through
:func:`attnbench.history.steps.detect_steps`:

- **recall**: 60 runs (one per commit), one step of 5%, 10% or 30% (a rise or a fall, a series
  where lower or higher is better) at a random commit 3..57, under 1%, 2% or 5% relative noise.
  Found = a step reported within +-2 commits of the true one, with the right kind;
- **false alarms**: flat histories, 60 runs of one commit's code (each at its own place on the
  timeline, as repeated runs of main would be) under the same noise: any step is a false alarm.
  Two more flat rows at 2% noise: 20 commits run 3 times each, and 5% of runs slowed by
  10-50% without being marked unstable (spikes);
- **a regression fixed later**: a 5% or 10% step that is undone 3-15 commits later (the case
  where binary segmentation is known to be weak): found when both steps are.

A run is 7 repeats; its value is their median, its band their quartiles. Its noise is half
(in variance) between runs, which its band cannot see, and half within the run, with a
per-run spread that varies (log-normal, sigma 0.5), so bands differ and mean something. "2%
noise" is the typical standard deviation of a stable run's value about its level. 10% of runs
are unstable (marked, with 3x the noise); 3% fail (oom/timeout: no value).

    python benchmarks/step_detection.py --out step_detection.md [--trials 200] [--seed 23]

Table 1 varies the threshold at the default penalty; table 2 compares methods, penalties and
ablations at the default threshold. Rows are the scenarios, columns the settings. No timing
is measured.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from attnbench.history.model import HIGHER, IMPROVEMENT, LOWER, REGRESSION, Point, Step
from attnbench.history.steps import DEFAULT_PENALTY, DEFAULT_THRESHOLD, detect_steps

STEP_SIZES = (0.05, 0.10, 0.30)
NOISES = (0.01, 0.02, 0.05)
THRESHOLDS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10)
REPEATS = 7
UNSTABLE_SHARE = 0.10
FAILED_SHARE = 0.03


def history(rng: np.random.Generator, *, n: int, noise: float, step: float = 0.0,
            change_at: int = 0, rise: bool = True, fixed_at: int | None = None,
            runs_per_commit: int = 1, spikes: float = 0.0) -> list[Point]:
    """One synthetic series: ``n`` runs, the level times (1 +- step) from commit
    ``change_at`` on (and back from commit ``fixed_at`` on, if given)."""
    base = math.exp(rng.normal(-5, 2))          # any scale: the detector is relative
    half = noise / math.sqrt(2)
    points = []
    for i in range(n):
        commit = i // runs_per_commit
        sha = f"c{commit:04d}"
        if rng.random() < FAILED_SHARE:
            points.append(Point(series_id=1, run_id=i, position=float(commit), sha=sha,
                                status=str(rng.choice(["oom", "timeout", "error"])),
                                value=None))
            continue
        stepped = step and commit >= change_at and (fixed_at is None or commit < fixed_at)
        level = base * ((1 + step if rise else 1 - step) if stepped else 1)
        unstable = bool(rng.random() < UNSTABLE_SHARE)
        inflate = 3.0 if unstable else 1.0
        spread = half * math.sqrt(REPEATS) / 1.2533 * math.exp(rng.normal(0, 0.5)) * inflate
        reps = level * np.exp(rng.normal(0, half * inflate) + rng.normal(0, spread, REPEATS))
        if not unstable and spikes and rng.random() < spikes:
            reps = reps * (1 + rng.uniform(0.1, 0.5))
        lo, med, hi = np.percentile(reps, [25, 50, 75])
        points.append(Point(series_id=1, run_id=i, position=float(commit), sha=sha,
                            status="ok", value=float(med), lo=float(lo), hi=float(hi),
                            samples=REPEATS, unstable=unstable))
    return points


def cells() -> list[dict]:
    """Every row of the tables: what to generate and how to score it."""
    out = [{"name": f"recall: {int(s * 100)}% step, {int(e * 100)}% noise", "kind": "recall",
            "noise": e, "step": s} for e in NOISES for s in STEP_SIZES]
    out += [{"name": f"false alarm: flat, {int(e * 100)}% noise", "kind": "flat", "noise": e}
            for e in NOISES]
    out += [{"name": "false alarm: flat, 2% noise, 20 commits x 3 runs", "kind": "flat",
             "noise": 0.02, "runs_per_commit": 3},
            {"name": "false alarm: flat, 2% noise, 5% spikes", "kind": "flat", "noise": 0.02,
             "spikes": 0.05}]
    out += [{"name": f"recall both: {int(s * 100)}% step fixed 3-15 commits later, "
                     f"{int(e * 100)}% noise", "kind": "fixed", "noise": e, "step": s}
            for e, s in ((0.02, 0.05), (0.02, 0.10), (0.05, 0.10))]
    return out


Detector = Callable[[Sequence[Point], str], list[Step]]


def _near(steps: list[Step], kind: str, commit: int) -> bool:
    return any(s.kind == kind and s.after_sha is not None
               and abs(int(s.after_sha[1:]) - commit) <= 2 for s in steps)


def measure(configs: dict[str, Detector], *, trials: int, seed: int, n: int) -> dict:
    """{config: {row name: (hits, trials, extra steps)}}; every config sees the same
    histories."""
    results: dict[str, dict[str, tuple[int, int, int]]] = {c: {} for c in configs}
    for ci, cell in enumerate(cells()):
        rng = np.random.default_rng([seed, ci])
        hits = dict.fromkeys(configs, 0)
        extra = dict.fromkeys(configs, 0)
        n_commits = n // cell.get("runs_per_commit", 1)
        for _ in range(trials):
            direction = LOWER if rng.random() < 0.5 else HIGHER
            rise = bool(rng.random() < 0.5)
            want = REGRESSION if rise == (direction == LOWER) else IMPROVEMENT
            back = IMPROVEMENT if want == REGRESSION else REGRESSION
            change_at = int(rng.integers(3, n_commits - 2))      # >= 3 commits a side
            fixed_at = None
            if cell["kind"] == "fixed":
                change_at = int(rng.integers(3, n_commits - 18))
                fixed_at = change_at + int(rng.integers(3, 16))
            pts = history(rng, n=n, noise=cell["noise"], step=cell.get("step", 0.0),
                          change_at=change_at, rise=rise, fixed_at=fixed_at,
                          runs_per_commit=cell.get("runs_per_commit", 1),
                          spikes=cell.get("spikes", 0.0))
            for name, detect in configs.items():
                steps = detect(pts, direction)
                if cell["kind"] == "flat":
                    found, expected = bool(steps), 0
                elif cell["kind"] == "recall":
                    found, expected = _near(steps, want, change_at), 1
                else:
                    found = _near(steps, want, change_at) and _near(steps, back, fixed_at)
                    expected = 2
                hits[name] += found
                extra[name] += max(0, len(steps) - expected)
        for name in configs:
            results[name][cell["name"]] = (hits[name], trials, extra[name])
    return results


def table(results: dict, first: str) -> str:
    """Rows: the cells; columns: the configurations; a last row of extra steps."""
    names = list(results)
    lines = ["| " + " | ".join([first, *names]) + " |", "|---" * (len(names) + 1) + "|"]
    rows = cells()
    for cell in rows:
        cols = [cell["name"]]
        for name in names:
            h, t, _ = results[name][cell["name"]]
            cols.append(f"{100 * h / t:.1f}%")
        lines.append("| " + " | ".join(cols) + " |")
    cols = ["extra steps per 100 histories with steps (besides the true ones)"]
    for name in names:
        ex = sum(results[name][c["name"]][2] for c in rows if c["kind"] != "flat")
        tr = sum(results[name][c["name"]][1] for c in rows if c["kind"] != "flat")
        cols.append(f"{100 * ex / tr:.1f}")
    lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Recall and false-alarm rate of attnbench's history step detector on "
                    "synthetic histories, for a grid of thresholds (table 1) and of methods "
                    "(table 2). Writes a Markdown report.")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (also printed)")
    ap.add_argument("--trials", type=int, default=200, help="histories per cell (default 200)")
    ap.add_argument("--seed", type=int, default=23, help="random seed (default 23)")
    ap.add_argument("--n", type=int, default=60, help="runs per history (default 60)")
    ap.add_argument("--thresholds", default=",".join(str(t) for t in THRESHOLDS),
                    help="comma-separated relative thresholds for table 1")
    ap.add_argument("--no-methods", action="store_true", help="skip table 2")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.n < 24:
        ap.error("--trials must be >= 1 and --n >= 24")
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--thresholds: not numbers: {args.thresholds!r}")
    cmd = "python benchmarks/step_detection.py " + " ".join(sys.argv[1:] if argv is None
                                                            else argv)

    def cfg(**kw) -> Detector:
        return lambda pts, d: detect_steps(pts, d, **kw)

    th = {f"{t:g}" + (" (default)" if t == DEFAULT_THRESHOLD else ""): cfg(threshold=t)
          for t in thresholds}
    out = ["# Step detection: recall and false alarms\n",
           f"`{cmd.strip()}`: {args.trials} histories per cell, seed {args.seed}, "
           f"{args.n} runs per history, {REPEATS} repeats per run, "
           f"{int(UNSTABLE_SHARE * 100)}% unstable (3x noise), {int(FAILED_SHARE * 100)}% "
           f"failed. Found = within +-2 commits with the right kind. With {args.trials} "
           f"trials a rate's standard error is at most "
           f"{50 / math.sqrt(args.trials):.1f} points (near 50%), "
           f"{100 * math.sqrt(0.02 * 0.98 / args.trials):.1f} near 2%.\n",
           f"## 1. Thresholds (penalty {DEFAULT_PENALTY:g}, method opt)\n",
           table(measure(th, trials=args.trials, seed=args.seed, n=args.n), "threshold")]
    if not args.no_methods:
        t = DEFAULT_THRESHOLD
        variants = {
            f"opt, penalty {DEFAULT_PENALTY:g} (default)": cfg(threshold=t),
            **{f"opt, penalty {p:g}": cfg(threshold=t, penalty=p)
               for p in (2.0, 2.5, 3.0, 3.5, 4.0, 5.0) if p != DEFAULT_PENALTY},
            f"binseg, penalty {DEFAULT_PENALTY:g}": cfg(threshold=t, method="binseg"),
            "binseg, penalty 3": cfg(threshold=t, method="binseg", penalty=3.0),
            "no band weights": cfg(threshold=t, band_weights=False),
            "unstable not down-weighted": cfg(threshold=t, unstable_weight=1.0),
            "no spike check": cfg(threshold=t, robust=False),
            "min_size 1": cfg(threshold=t, min_size=1),
            "no excursion rule": cfg(threshold=t, max_excursion=0),
            "excursions up to 3 commits": cfg(threshold=t, max_excursion=3),
        }
        out += [f"\n## 2. Methods and ablations (threshold {t:g})\n",
                table(measure(variants, trials=args.trials, seed=args.seed, n=args.n),
                      "variant")]
    text = "\n".join(out) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
