"""The runner: every case in its own worker process; every outcome a row in the store.

For each case not already in the run (resume), the runner starts a worker through a launcher:
warm (the default), a child forked from a template process that has already imported the
case's framework (:mod:`attnbench.runner.warm`), or cold (``--cold``), a fresh
``python -m attnbench.runner.worker``; either way the case goes in as JSON, stdout and stderr
go to files, and the runner waits, polling: past ``timeout_s`` the worker's process group is
killed and the row says ``timeout``; past ``memory_limit_mb`` of resident memory it is killed
and the row says ``oom``. A worker killed by a signal (the kernel's OOM killer sends SIGKILL)
is an ``oom`` row only when the kernel's OOM-kill counters moved
(:mod:`attnbench.measure.oom`), else an ``error`` row with the signal named. Once a case runs
out of memory, the longer cases of the same series (same everything but length and batch) are
recorded as ``skipped`` instead of being attempted.

Each row is appended and fsynced the moment its case ends, so a run killed at any point
loses at most the case in flight, which runs again when the same command is repeated.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
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
from attnbench.runner import compile_cache as compile_cache_env
from attnbench.runner.case import Case
from attnbench.runner.warm import TemplateError, Templates, kill_group
from attnbench.store import RunStore, metric_problem

POLL_S = 0.02
ERROR_TAIL_LINES = 8
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    status: str
    error: str | None
    metrics: dict
    wall_s: float


def worker_env(run_dir: Path | None = None, compile_cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["ATTNBENCH_RUNNER_PID"] = str(os.getpid())  # the worker dies with this process
    if run_dir is not None:  # task cases keep their checkpoints in the run directory
        env["ATTNBENCH_RUN_DIR"] = str(Path(run_dir).resolve())
    env.pop(compile_cache_env.ENV, None)
    if compile_cache is not None:
        env[compile_cache_env.ENV] = str(Path(compile_cache).resolve())
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


class _ColdChild:
    """A cold worker process, with the handle the supervisor uses (``wait``, ``kill``)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.pid = proc, proc.pid

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        kill_group(self.proc.pid)
        self.proc.wait()


class ColdLauncher:
    """Every case in a fresh interpreter, ``python -m attnbench.runner.worker`` in its own
    session, the case on stdin: the reference behaviour (``attnbench run --cold``)."""

    kind = "cold"

    def __init__(self, python: str = sys.executable, compile_cache: Path | None = None) -> None:
        self.python, self.compile_cache = python, compile_cache

    def start(self, case: Case, run_dir: Path | None, out: Path, err: Path):
        """The started worker's handle, the moment it started, and facts for its row."""
        started = time.perf_counter()
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen([self.python, "-m", "attnbench.runner.worker"],
                                    stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
                                    env=worker_env(run_dir, self.compile_cache),
                                    start_new_session=True, text=True)
        child = _ColdChild(proc)
        try:
            proc.stdin.write(json.dumps(case.to_dict()))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the worker died before reading its case: its exit status says why
        except BaseException:
            child.kill()
            raise
        return child, started, {}

    def close(self) -> None:
        pass


# Variables that may change from case to case (Ray gives each task its GPU) and that nothing
# reads before the case starts: a warm child gets them per case; any other change of the
# environment starts a new template.
PER_CASE_ENV = ("ATTNBENCH_RUN_DIR", "CUDA_VISIBLE_DEVICES")


class WarmLauncher(ColdLauncher):
    """Every case a child forked by its framework's template (:mod:`attnbench.runner.warm`),
    the default; the templates start on first use and stop with ``close``."""

    kind = "warm"

    def __init__(self, python: str = sys.executable, compile_cache: Path | None = None) -> None:
        super().__init__(python, compile_cache)
        self.scratch = Path(tempfile.mkdtemp(prefix="attnbench-templates-"))
        self.templates = Templates(python, self.scratch)

    def start(self, case: Case, run_dir: Path | None, out: Path, err: Path):
        env = worker_env(run_dir, self.compile_cache)
        per_case = {name: env.pop(name, None) for name in PER_CASE_ENV}
        template, start_s = self.templates.template(case.framework, env)
        started = time.perf_counter()
        child = template.fork(case.to_dict(), per_case, out, err)
        facts = {} if start_s is None else {"worker_template_start_s": start_s}
        return child, started, facts

    def close(self) -> None:
        import shutil

        self.templates.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


WORKERS = ("warm", "cold")


def make_launcher(workers: str = "warm", python: str = sys.executable,
                  compile_cache: Path | None = None) -> ColdLauncher:
    """A launcher of ``workers`` (``warm`` or ``cold``); the caller closes it."""
    if workers not in WORKERS:
        raise ValueError(f"workers={workers!r}: must be one of {', '.join(WORKERS)}")
    return (WarmLauncher if workers == "warm" else ColdLauncher)(python, compile_cache)


@contextlib.contextmanager
def launcher(workers: str = "warm", python: str = sys.executable,
             compile_cache: Path | None = None):
    """:func:`make_launcher`, closed on exit."""
    made = make_launcher(workers, python, compile_cache)
    try:
        yield made
    finally:
        made.close()


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_case(case: Case, *, run_dir: Path | None = None, python: str = sys.executable,
             launcher=None) -> Outcome:
    """Run one case in a worker process (``launcher``'s, else a cold one); never raises for a
    failing case. The row's metrics say how it started (``worker``) and which machine ran it
    (``node_*``), and for timed modes the harness's own time (``overhead_s``)."""
    launcher = launcher or ColdLauncher(python)
    outcome = _run_worker(case, run_dir=run_dir, launcher=launcher)
    outcome.metrics = {**outcome.metrics, "worker": launcher.kind, **node_facts(case.device)}
    m = outcome.metrics
    if outcome.status == "ok" and "warmup_s" in m and m.get("time_samples_s") is not None:
        # process start, imports, building and compiling the step: wall minus the measured calls
        m["overhead_s"] = outcome.wall_s - m["warmup_s"] - sum(m["time_samples_s"])
    return outcome


def _run_worker(case: Case, *, run_dir: Path | None, launcher) -> Outcome:
    oom_before = oom_kills()
    with tempfile.TemporaryDirectory(prefix="attnbench-case-") as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        start = time.perf_counter()
        try:
            child, start, facts = launcher.start(case, run_dir, out, err)
        except TemplateError as exc:
            return Outcome("error", f"no worker: {exc}", {}, time.perf_counter() - start)
        killed_for = None
        returncode = None
        try:
            while (returncode := child.wait(POLL_S)) is None:
                elapsed = time.perf_counter() - start
                if elapsed > case.timeout_s:
                    killed_for = "timeout"
                elif case.memory_limit_mb and (_rss_mb(child.pid) or 0) > case.memory_limit_mb:
                    killed_for = "memory"
                if killed_for:
                    child.kill()
                    break
        except TemplateError as exc:
            child.kill()
            return Outcome("error", str(exc), facts, time.perf_counter() - start)
        except BaseException:
            child.kill()  # interrupted: leave no orphan worker behind
            raise
        wall = time.perf_counter() - start
        stdout = out.read_text(errors="replace")
        stderr = err.read_text(errors="replace")
    if killed_for == "timeout":
        return Outcome("timeout", f"no result within timeout_s={case.timeout_s:g} s "
                       "(worker killed)", facts, wall)
    if killed_for == "memory":
        return Outcome("oom", f"resident memory exceeded memory_limit_mb="
                       f"{case.memory_limit_mb} (worker killed)", facts, wall)
    result = _last_json(stdout)
    if result is not None and returncode == 0:
        return Outcome(result["status"], result.get("error"),
                       {**result.get("metrics", {}), **facts}, wall)
    tail = " | ".join(stderr.strip().splitlines()[-ERROR_TAIL_LINES:])
    if returncode == -signal.SIGKILL:
        detail = f": {tail}" if tail else ""
        killed_by_oom = oom_killed_between(oom_before, oom_kills())
        if killed_by_oom:
            return Outcome("oom", "worker killed by SIGKILL from the kernel's OOM killer (its "
                           f"oom_kill counter moved){detail}", facts, wall)
        why = ("no OOM-kill counter moved: not the OOM killer" if killed_by_oom is False
               else "no OOM-kill counter is readable here, so it cannot say whether memory "
               "ran out")
        return Outcome("error", f"worker killed by SIGKILL ({why}){detail}", facts, wall)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return Outcome("error", f"worker killed by {name}: {tail}", facts, wall)
    return Outcome("error", f"worker exited with code {returncode}: {tail}", facts, wall)


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
        outcome = schema_checked(outcome)
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


def schema_checked(outcome: Outcome) -> Outcome:
    """The outcome with the metrics the row schema refuses (a NaN, an infinite or negative
    time, memory or error) left out and named in the row's error; a case that measured one
    is an ``error``, never a number a gate would judge."""
    bad = {name: metric_problem(name, value) for name, value in outcome.metrics.items()}
    bad = {name: why for name, why in bad.items() if why}
    if not bad:
        return outcome
    kept = {name: value for name, value in outcome.metrics.items() if name not in bad}
    error = "the case measured values the row schema refuses: " + "; ".join(bad.values())
    if outcome.error:
        error += f" (and: {outcome.error})"
    return Outcome("error" if outcome.status == "ok" else outcome.status, error, kept,
                   outcome.wall_s)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_cases(cases: Sequence[Case], store: RunStore, run_id: str, *,
              progress: bool = True, runner: Callable[..., Outcome] | None = None,
              retry: Sequence[str] = (), workers: str = "warm",
              compile_cache: Path | None = None) -> dict:
    """Run every case not yet in ``store``, one at a time, and those whose last row has a
    status in ``retry`` (the new row supersedes the old), in ``workers`` (warm or cold) with
    the compile cache ``compile_cache`` (None: none); returns counts by status for this
    invocation. ``runner`` replaces :func:`run_case` (tests)."""
    sweep = Sweep(cases, store, run_id, progress=progress, retry=retry)
    try:
        with launcher(workers, compile_cache=compile_cache) as made:
            run = runner or functools.partial(run_case, launcher=made)
            for case in sweep.todo:
                sweep.bar.set_postfix_str(case.label(), refresh=True)
                started = now()
                reason = sweep.skip_reason(case)
                if reason:
                    outcome = Outcome("skipped", reason, {}, 0.0)
                else:
                    outcome = run(case, run_dir=store.path)
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
