"""``attnbench history confirm STEP``: measure a suspected step again, at its two commits, on
this machine, interleaved, and judge it with ``compare``'s statistics.

Each commit gets a git worktree (``git worktree add --detach``). The step's case (stored with
its series) becomes a one-case suite, and ``attnbench run`` runs it in each worktree with that
worktree first on ``PYTHONPATH`` (so a commit of attnbench itself measures its own code; a
project that only uses attnbench measures its own files: a suite plugin under the repository
is taken from the worktree). The commits alternate, before/after then after/before (ABBA), for
``rounds`` rounds, so a drift of the machine falls on both. The repeats of every round are
pooled per commit and compared (:func:`attnbench.compare.compare_rows`, default thresholds):

- ``confirmed``: compare finds the step's kind (a regression for a regression);
- ``not reproduced``: compare finds the times (or memory) unchanged;
- ``inconclusive``: anything else (a side unstable, nothing measured, the opposite change, a
  commit whose code cannot run the case), with the reason.

Accuracy and approximation metrics are deterministic for a fixed seed: the two commits'
values are compared directly against the detector's threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnbench.history.model import HIGHER, IMPROVEMENT, REGRESSION, Series, Step

CONFIRMED, NOT_REPRODUCED, INCONCLUSIVE = "confirmed", "not reproduced", "inconclusive"
# Case fields a suite does not take as axes (they are the suite's, or derived).
_NOT_AXES = ("suite", "plugins")


class ConfirmError(RuntimeError):
    """A step that cannot be measured again (no repository, an unknown commit, no case)."""


@contextlib.contextmanager
def worktree(repo: Path, sha: str, where: Path) -> Iterator[Path]:
    """A detached worktree of ``repo`` at ``sha`` under ``where``, removed afterwards."""
    path = where / sha[:12]
    out = subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise ConfirmError(f"git worktree add {sha[:12]} in {repo}: {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo,
                       capture_output=True, timeout=300)
        shutil.rmtree(path, ignore_errors=True)


def suite_text(case: dict[str, Any], repo: Path, tree: Path) -> str:
    """A one-case suite for ``case``; plugin files under ``repo`` are taken from ``tree``."""
    plugins = []
    for ref in case.get("plugins") or ():
        path = Path(ref)
        if path.is_absolute() and path.resolve().is_relative_to(repo.resolve()):
            ref = str(tree / path.resolve().relative_to(repo.resolve()))
        plugins.append(ref)
    fields = {k: v for k, v in case.items() if k not in _NOT_AXES and v is not None}
    lines = ['name = "confirm"', f"plugins = {json.dumps(plugins)}", "[[sweep]]"]
    lines += [f"{k} = {_toml(v)}" for k, v in sorted(fields.items())]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in
                               value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def measure_once(tree: Path, case: dict[str, Any], repo: Path, scratch: Path,
                 tag: str) -> dict[str, Any]:
    """Run the case once in ``tree``; its result row (an error row if the commit could not)."""
    suite = scratch / f"{tag}.toml"
    suite.write_text(suite_text(case, repo, tree), encoding="utf-8")
    out = scratch / tag
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "attnbench.cli", "run", str(suite), "--out",
                           str(out), "--no-progress", "--fresh"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=3600)
    rows = []
    if (out / "results.jsonl").is_file():
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
                if line.strip()]
    if proc.returncode or len(rows) != 1:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"status": "error", "error": f"attnbench run at {tag} exited "
                f"{proc.returncode}: {tail}", "metrics": {}}
    return rows[0]


def pooled(rows: list[dict[str, Any]], case_id: str) -> dict[str, Any]:
    """One row from several runs of one case: every repeat's time, the median memory."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return {"case_id": case_id, "case": {}, "status": rows[-1].get("status", "error"),
                "error": rows[-1].get("error"), "metrics": {}}
    samples = [s for r in ok for s in r["metrics"].get("time_samples_s") or []]
    metrics: dict[str, Any] = {}
    if samples:
        ordered = sorted(samples)
        metrics["time_samples_s"] = samples
        metrics["time_median_s"] = ordered[len(ordered) // 2] if len(ordered) % 2 else \
            (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    for name in ("mem_peak_mb", "task_accuracy", "approx_out_rel_err", "approx_grad_rel_err",
                 "approx_recall"):
        values = sorted(r["metrics"][name] for r in ok
                        if isinstance(r["metrics"].get(name), int | float))
        if values:
            metrics[name] = values[len(values) // 2]
    unstable = [r for r in ok if r["metrics"].get("unstable")]
    if unstable:
        metrics["unstable"] = True
        metrics["unstable_reasons"] = [str(x) for r in unstable
                                       for x in r["metrics"].get("unstable_reasons") or []]
    return {"case_id": case_id, "case": ok[0].get("case", {}), "status": "ok", "error": None,
            "metrics": metrics}


# What compare judges for each metric; the other metric is left out of both rows, so the
# verdict is this metric's alone.
_COMPARED = {"time_median_s": ("time_median_s", "time_samples_s", "unstable",
                               "unstable_reasons"),
             "mem_peak_mb": ("mem_peak_mb",)}


def _only(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {**row, "metrics": {k: v for k, v in row["metrics"].items() if k in keys}}


def judge(step: Step, series: Series, before: dict, after: dict,
          threshold: float) -> tuple[str, dict[str, Any]]:
    """(verdict, detail) for the step from the pooled rows at its two commits."""
    from attnbench.compare import IMPROVEMENT as IMPROVED
    from attnbench.compare import REGRESSION as REGRESSED
    from attnbench.compare import UNCHANGED, compare_rows

    if series.metric in _COMPARED:
        keys = _COMPARED[series.metric]
        c = compare_rows([_only(before, keys)], [_only(after, keys)])[0]
        found = {REGRESSED: REGRESSION, IMPROVED: IMPROVEMENT}.get(c.verdict, c.verdict)
        detail = {"compare_verdict": c.verdict, "reasons": c.reasons,
                  "time_ratio": c.time_ratio, "time_p": c.time_p, "mem_ratio": c.mem_ratio,
                  "samples": [len(before["metrics"].get("time_samples_s") or []),
                              len(after["metrics"].get("time_samples_s") or [])]}
    else:  # accuracy and approximation error: deterministic for a fixed seed
        b, a = before["metrics"].get(series.metric), after["metrics"].get(series.metric)
        detail = {"before": b, "after": a}
        if b is None or a is None or b == 0:
            found = "not measured"
        else:
            ratio = a / b
            detail["ratio"] = ratio
            higher_is_better = series.direction == HIGHER
            worse = ratio < 1 - threshold if higher_is_better else ratio > 1 + threshold
            better = ratio > 1 + threshold if higher_is_better else ratio < 1 - threshold
            found = REGRESSION if worse else IMPROVEMENT if better else UNCHANGED
    detail["found"] = found
    if found == step.kind:
        return CONFIRMED, detail
    if found == UNCHANGED:
        return NOT_REPRODUCED, detail
    detail["why"] = (f"the re-measurement found {found!r}, not the step's {step.kind!r}"
                     if found in (REGRESSION, IMPROVEMENT) else f"re-measured: {found}")
    if detail.get("reasons"):  # compare's own words: which side was unstable, and why
        detail["why"] += f" ({'; '.join(detail['reasons'])})"
    return INCONCLUSIVE, detail


def confirm(step: Step, series: Series, case: dict[str, Any], repo: Path, *,
            rounds: int = 3, threshold: float = 0.05, log=print) -> tuple[str, dict[str, Any]]:
    """Measure ``step``'s case at its two commits, interleaved; (verdict, detail)."""
    if not step.before_sha or not step.after_sha:
        raise ConfirmError(f"step {step.id}: a commit is unknown (before {step.before_sha}, "
                           f"after {step.after_sha}); only runs with a recorded commit can be "
                           "measured again")
    if rounds < 1:
        raise ConfirmError(f"--rounds {rounds}: must be an integer >= 1")
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="attnbench-confirm-") as tmp:
        scratch = Path(tmp)
        with worktree(repo, step.before_sha, scratch) as before_tree, \
                worktree(repo, step.after_sha, scratch) as after_tree:
            trees = {"before": before_tree, "after": after_tree}
            for r in range(rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in order:
                    log(f"round {r + 1}/{rounds}: {side} ({getattr(step, side + '_sha')[:10]})")
                    rows[side].append(measure_once(trees[side], case, repo, scratch,
                                                   f"{side}-{r}"))
    before = pooled(rows["before"], series.case_id)
    after = pooled(rows["after"], series.case_id)
    verdict, detail = judge(step, series, before, after, threshold)
    detail.update({"rounds": rounds, "order": "ABBA",
                   "errors": [r.get("error") for side in rows.values() for r in side
                              if r.get("status") != "ok"]})
    return verdict, detail
