"""The runner: every case in a fresh worker process; every outcome a row in the store.

For each case not already in the run (resume), the runner starts
``python -m attnbench.runner.worker`` with the case on stdin and its stdout and stderr going
to files, then waits, polling: past ``timeout_s`` the worker's process group is killed and
the row says ``timeout``; past ``memory_limit_mb`` of resident memory it is killed and the row
says ``oom``. A worker killed by a signal (the kernel's OOM killer sends SIGKILL) is an
``oom`` row only when the kernel's OOM-kill counters moved (:mod:`attnbench.measure.oom`), else
an ``error`` row with the signal named. Once a case runs out of memory, the longer
cases of the same series (same everything but length and batch) are recorded as ``skipped``
instead of being attempted.

Each row is appended and fsynced the moment its case ends, so a run killed at any point
loses at most the case in flight, which runs again when the same command is repeated.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attnbench.measure.environment import node_facts
from attnbench.measure.oom import oom_killed_between, oom_kills
from attnbench.runner.case import Case
from attnbench.store import RunStore

POLL_S = 0.02
ERROR_TAIL_LINES = 8
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    status: str
    error: str | None
    metrics: dict
    wall_s: float


def worker_env(run_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["ATTNBENCH_RUNNER_PID"] = str(os.getpid())  # the worker dies with this process
    if run_dir is not None:  # task cases keep their checkpoints in the run directory
        env["ATTNBENCH_RUN_DIR"] = str(Path(run_dir).resolve())
    # JAX must not take most of the GPU up front: the peak must show, and room must remain.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    parts = [str(_PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_case(case: Case, *, run_dir: Path | None = None, python: str = sys.executable) -> Outcome:
    """Run one case in a fresh worker process; never raises for a failing case. The row's
    metrics say which machine ran it (``node_*``)."""
    outcome = _run_worker(case, run_dir=run_dir, python=python)
    outcome.metrics = {**outcome.metrics, **node_facts(case.device)}
    return outcome


def _run_worker(case: Case, *, run_dir: Path | None, python: str) -> Outcome:
    start = time.perf_counter()
    oom_before = oom_kills()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, "-m", "attnbench.runner.worker"],
                                stdin=subprocess.PIPE, stdout=out, stderr=err,
                                env=worker_env(run_dir), start_new_session=True, text=True)
        killed_for = None
        try:
            try:
                proc.stdin.write(json.dumps(case.to_dict()))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the worker died before reading its case: its exit status says why
            while proc.poll() is None:
                elapsed = time.perf_counter() - start
                if elapsed > case.timeout_s:
                    killed_for = "timeout"
                elif case.memory_limit_mb and (_rss_mb(proc.pid) or 0) > case.memory_limit_mb:
                    killed_for = "memory"
                if killed_for:
                    _kill_group(proc)
                    break
                time.sleep(POLL_S)
        except BaseException:
            _kill_group(proc)  # interrupted: leave no orphan worker behind
            raise
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if killed_for == "timeout":
        return Outcome("timeout", f"no result within timeout_s={case.timeout_s:g} s "
                       "(worker killed)", {}, wall)
    if killed_for == "memory":
        return Outcome("oom", f"resident memory exceeded memory_limit_mb="
                       f"{case.memory_limit_mb} (worker killed)", {}, wall)
    result = _last_json(stdout)
    if result is not None and proc.returncode == 0:
        return Outcome(result["status"], result.get("error"), result.get("metrics", {}), wall)
    tail = " | ".join(stderr.strip().splitlines()[-ERROR_TAIL_LINES:])
    if proc.returncode == -signal.SIGKILL:
        detail = f": {tail}" if tail else ""
        killed_by_oom = oom_killed_between(oom_before, oom_kills())
        if killed_by_oom:
            return Outcome("oom", "worker killed by SIGKILL from the kernel's OOM killer (its "
                           f"oom_kill counter moved){detail}", {}, wall)
        why = ("no OOM-kill counter moved: not the OOM killer" if killed_by_oom is False
               else "no OOM-kill counter is readable here, so it cannot say whether memory "
               "ran out")
        return Outcome("error", f"worker killed by SIGKILL ({why}){detail}", {}, wall)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return Outcome("error", f"worker killed by {name}: {tail}", {}, wall)
    return Outcome("error", f"worker exited with code {proc.returncode}: {tail}", {}, wall)


def skipped_by_oom(case: Case, oom_lengths: dict[str, int]) -> str | None:
    """The reason to skip ``case`` when a shorter case of its series ran out of memory."""
    length = oom_lengths.get(case.series_key())
    if length is not None and case.length > length:
        return f"the same series ran out of memory at length {length}"
    return None


class Sweep:
    """What a sweep has left to do, and the one place its rows are written: the cases not yet
    in the store (and those whose last row has a status in ``retry``), the lengths at which
    each series ran out of memory, counts by status, and the progress bar. Both executors
    (this module's one-at-a-time loop and :mod:`attnbench.runner.ray_executor`) use it."""

    def __init__(self, cases: Sequence[Case], store: RunStore, run_id: str, *,
                 progress: bool = True, retry: Sequence[str] = ()) -> None:
        self.store, self.run_id = store, run_id
        store.repair()
        rows, problems = store.scan()
        for problem in problems:
            print(f"warning: {problem}: left out (its case, if any, runs again)",
                  file=sys.stderr)
        last = {row["case_id"]: row for row in rows}  # the last row of a case decides
        done = {k: row for k, row in last.items() if row["status"] not in retry}
        self.oom_lengths: dict[str, int] = {}
        for row in done.values():
            if row["status"] == "oom":
                self._note_oom(Case.from_dict(row["case"]))
        self.todo = [c for c in cases if c.case_id not in done]
        self.counts: dict[str, int] = {}
        self.bar = _progress(len(cases), len(cases) - len(self.todo), progress)

    def _note_oom(self, case: Case) -> None:
        key = case.series_key()
        self.oom_lengths[key] = min(case.length, self.oom_lengths.get(key, case.length))

    def skip_reason(self, case: Case) -> str | None:
        return skipped_by_oom(case, self.oom_lengths)

    def record(self, case: Case, outcome: Outcome, started: str) -> None:
        """Append the case's row (durable before this returns) and update the counts."""
        self.store.append({"run_id": self.run_id, "case_id": case.case_id,
                           "case": case.to_dict(), "status": outcome.status,
                           "error": outcome.error, "metrics": outcome.metrics,
                           "started_at": started, "wall_s": outcome.wall_s})
        if outcome.status == "oom":
            self._note_oom(case)
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        if outcome.status != "ok":
            self.bar.write(f"{case.label()}: {outcome.status}: "
                           f"{(outcome.error or '').splitlines()[0][:160]}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_cases(cases: Sequence[Case], store: RunStore, run_id: str, *,
              progress: bool = True, runner: Callable[..., Outcome] = run_case,
              retry: Sequence[str] = ()) -> dict:
    """Run every case not yet in ``store``, one at a time, and those whose last row has a
    status in ``retry`` (the new row supersedes the old); returns counts by status for this
    invocation."""
    sweep = Sweep(cases, store, run_id, progress=progress, retry=retry)
    try:
        for case in sweep.todo:
            sweep.bar.set_postfix_str(case.label(), refresh=True)
            started = now()
            reason = sweep.skip_reason(case)
            if reason:
                outcome = Outcome("skipped", reason, {}, 0.0)
            else:
                outcome = runner(case, run_dir=store.path)
            sweep.record(case, outcome, started)
    finally:
        sweep.close()
    return sweep.counts


class _NoBar:
    """What the runner needs of a tqdm bar, for --no-progress: failures are still printed."""

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="case", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)
