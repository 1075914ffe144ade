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
