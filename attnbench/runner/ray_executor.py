"""``attnbench run --executor ray``: every case a Ray task, every row in the same store.

The driver (this process) keeps the run directory, its lock and its store, exactly as the
local runner does; each case runs as a task that calls :func:`attnbench.runner.run.run_case` on
its node, so the worker process, its isolation, timeout, memory limit and failure
classification are the local runner's. Rows are appended as tasks finish, so resume, report,
compare and check work unchanged on a run made through Ray.

Scheduling, decided by the driver so it always knows where a case runs:

* a series (every field but the length) runs in order, one case at a time, so the
  out-of-memory rule (a series stops at its first OOM length) holds; different series run in
  parallel;
* a CUDA case asks for one GPU (Ray sets ``CUDA_VISIBLE_DEVICES``): never two timed cases on
  one GPU at once;
* CPU cases run one at a time per node by default (timings on shared cores measure the
  neighbours); ``--cpu-cases-per-node`` allows more, and each row records the value;
* each task is pinned to the node the driver chose (``NodeAffinitySchedulingStrategy``) and
  is never retried by Ray (``max_retries=0``: a retried timing case would be recorded twice).

A task lost with its worker or node is an ``error`` row naming the node and why, and the sweep
goes on. The driver killed at any point loses only the cases in flight, which run again when
the same command is repeated.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path

from attnbench.runner.case import Case
from attnbench.runner.run import Outcome, Sweep, now
from attnbench.store import RunStore

RAY_EXTRA = "pip install 'attnbench[ray]'"
WAIT_S = 0.5


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached: said before anything starts."""


def connect(address: str | None):
    """The ``ray`` module, connected: to ``address`` (or ``RAY_ADDRESS``), else a local Ray
    started for this run (a laptop or one node). Raises :class:`RayUnavailable`."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") \
            from None
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    _probe(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types for "cannot connect"
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise RayUnavailable(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") \
            from None
    return ray


def _probe(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a host:port nothing listens on (Ray itself retries for minutes)."""
    if not address or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailable(f"--address {address!r}: must be HOST:PORT, ray://HOST:PORT or "
                             "auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot start or reach the Ray cluster at {address!r}: nothing "
                             f"answers there ({exc.strerror or exc}); start it with `ray start "
                             "--head`, or leave out --address for a local Ray") from None


@functools.cache
def _launcher(python: str, workers: str, compile_cache: str | None):
    """The launcher of this Ray worker process: its warm templates serve every task it runs
    and die with it."""
    from attnbench.runner.run import make_launcher

    return make_launcher(workers, python, None if compile_cache is None else Path(compile_cache))


def _run_remote(case_dict: dict, run_dir: str, python: str, workers: str,
                compile_cache: str | None) -> dict:
    """The task: the local runner's ``run_case`` on whatever node Ray placed it."""
    from attnbench.runner.run import run_case

    outcome = run_case(Case.from_dict(case_dict), run_dir=Path(run_dir),
                       launcher=_launcher(python, workers, compile_cache))
    return dataclasses.asdict(outcome)


@dataclasses.dataclass(frozen=True)
class _Node:
    node_id: str
    host: str
    cpus: float
    gpus: float


def _alive_nodes(ray) -> dict[str, _Node]:
    nodes = {}
    for n in ray.nodes():
        if n.get("Alive"):
            res = n.get("Resources", {})
            nodes[n["NodeID"]] = _Node(n["NodeID"], n.get("NodeManagerHostname", "?"),
                                       res.get("CPU", 0.0), res.get("GPU", 0.0))
    return nodes


def run_cases_ray(cases: Sequence[Case], store: RunStore, run_id: str, *, ray,
                  progress: bool = True, retry: Sequence[str] = (),
                  cpu_cases_per_node: int = 1, python: str | None = None,
                  workers: str = "warm", compile_cache: Path | None = None) -> dict:
    """Run the sweep's remaining cases as Ray tasks, each in ``workers`` (warm or cold) with
    the compile cache ``compile_cache`` (a path every node can write; None: none); returns
    counts by status."""
    if cpu_cases_per_node < 1:
        raise ValueError(f"cpu_cases_per_node={cpu_cases_per_node}: must be >= 1")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(max_retries=0)(_run_remote)
    sweep = Sweep(cases, store, run_id, progress=progress, retry=retry)
    series: OrderedDict[str, deque[Case]] = OrderedDict()
    for case in sweep.todo:  # already in series order, shortest first
        series.setdefault(case.series_key(), deque()).append(case)
    nodes = _alive_nodes(ray)
    running: Counter[tuple[str, str]] = Counter()  # (node id, "cpu" | "gpu") -> cases
    in_flight: dict = {}  # ref -> (case, node, started, t0)
    busy_series: set[str] = set()
    extra = {"executor": "ray", "executor_cpu_cases_per_node": cpu_cases_per_node}

    def slot(case: Case) -> str:
        return "gpu" if case.device.startswith("cuda") else "cpu"

    def place(case: Case) -> _Node | None:
        for node in nodes.values():
            if slot(case) == "gpu" and running[node.node_id, "gpu"] < int(node.gpus):
                return node
            if slot(case) == "cpu" and running[node.node_id, "cpu"] < cpu_cases_per_node \
                    and node.cpus >= (case.threads or 1):
                return node
        return None

    def submit_ready() -> None:
        for key, queue in series.items():
            while queue and key not in busy_series:
                case = queue[0]
                reason = sweep.skip_reason(case)
                if reason:
                    queue.popleft()
                    sweep.record(case, Outcome("skipped", reason, dict(extra), 0.0), now())
                    continue
                node = place(case)
                if node is None:
                    if not any(_could_ever_run(case, n) for n in nodes.values()):
                        queue.popleft()
                        sweep.record(case, Outcome("error", _no_node_message(case, nodes),
                                                   dict(extra), 0.0), now())
                        continue
                    break
                queue.popleft()
                options = {"num_gpus": 1, "num_cpus": 1} if slot(case) == "gpu" else \
                    {"num_cpus": case.threads or 1}
                ref = remote.options(
                    **options, scheduling_strategy=NodeAffinitySchedulingStrategy(
                        node.node_id, soft=False)).remote(
                    case.to_dict(), str(store.path.resolve()), python or sys.executable,
                    workers, None if compile_cache is None else str(compile_cache))
                running[node.node_id, slot(case)] += 1
                in_flight[ref] = (case, node, now(), time.perf_counter())
                busy_series.add(key)

    try:
        submit_ready()
        while in_flight:
            queued = sum(len(q) for q in series.values())
            sweep.bar.set_postfix_str(f"running {len(in_flight)}, queued {queued}",
                                      refresh=True)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                case, node, started, t0 = in_flight.pop(ref)
                running[node.node_id, slot(case)] -= 1
                busy_series.discard(case.series_key())
                try:
                    outcome = Outcome(**ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - a lost task is that case's row
                    outcome = Outcome("error", f"lost on node {node.host} ({node.node_id[:12]}): "
                                      f"{type(exc).__name__}: {str(exc).strip()[-600:]}",
                                      {"node_host": node.host}, time.perf_counter() - t0)
                outcome.metrics = {**outcome.metrics, **extra, "ray_node_id": node.node_id}
                sweep.record(case, outcome, started)
            if ready:
                nodes = _alive_nodes(ray)  # nodes may join or leave mid-sweep
                submit_ready()
    except BaseException:
        for ref in in_flight:  # interrupted: the cases in flight run again on resume
            ray.cancel(ref, force=True)
        raise
    finally:
        sweep.close()
    return sweep.counts


def _could_ever_run(case: Case, node: _Node) -> bool:
    if case.device.startswith("cuda"):
        return node.gpus >= 1
    return node.cpus >= (case.threads or 1)


def _no_node_message(case: Case, nodes: dict[str, _Node]) -> str:
    have = ", ".join(f"{n.host}: {n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes.values()) \
        or "no alive node"
    need = "1 GPU" if case.device.startswith("cuda") else f"{case.threads or 1} CPU(s)"
    return f"no node of the Ray cluster can run this case (it needs {need}; the cluster has " \
           f"{have})"
