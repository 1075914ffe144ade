"""Run directories for tests, made by the real writer: ``RunMeta`` with the environment
``attnbench run`` records (``capture``, without the torch/jax probe, which takes seconds)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from attnbench.meta import Environment, RunMeta, SuiteInfo
from attnbench.store import RunStore


@cache
def environment() -> Environment:
    from attnbench.measure.environment import capture

    return capture(probe_frameworks=False)


def create_run(path: str | Path, run_id: str | None = None, suite: str = "t",
               contracts: list | tuple = (), description: str = "") -> RunStore:
    path = Path(path)
    store = RunStore(path)
    store.create(RunMeta(run_id=run_id or path.name, started_at="2026-12-01T00:00:00+00:00",
                         argv=["attnbench", "run", suite],
                         suite=SuiteInfo(name=suite, description=description,
                                         contracts=list(contracts)),
                         environment=environment()))
    return store


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable that ignores its arguments and runs ``body`` (bash): a worker that
    misbehaves on demand, in place of the Python executable."""
    path = tmp_path / "fake-python"
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def wait_for_rows(results: Path, n: int = 1, timeout_s: float = 120.0) -> None:
    """Poll until ``results.jsonl`` holds ``n`` rows (a runner under test is mid-sweep)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (
            results.is_file() and results.read_text().count("\n") >= n):
        time.sleep(0.05)
