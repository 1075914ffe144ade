"""Read what a report or a comparison is built from: run directories and pytest-benchmark files.

Both become a :class:`Source`: the run's metadata and its result rows in the store's row schema
(:mod:`attnbench.store`), so everything downstream handles one shape. A pytest-benchmark JSON
file (``pytest --benchmark-json=PATH``) is recognised by its content (a ``benchmarks`` list and
``machine_info``), not by its name; each benchmark becomes one ``ok`` row whose case is taken
from its ``params`` and ``extra_info`` where they name case fields.

Nothing here needs pandas: ``attnbench compare`` and ``check`` use it without the report extra.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.store import META_FILE, RESULTS_FILE, RunStore, StoreError

# Case fields a pytest-benchmark's params / extra_info may carry (see attnbench.runner.case).
CASE_FIELDS = ("variant", "framework", "mode", "length", "device", "dtype", "batch", "d_model",
               "n_heads", "d_ff", "depth", "vocab_size", "causal", "n_hashes", "n_buckets",
               "chunk_len", "ff_chunk_len", "seed", "threads")
# Timing statistics of pytest-benchmark, in seconds, and the metric each becomes.
PYTEST_BENCHMARK_STATS = {"median": "time_median_s", "iqr": "time_iqr_s", "mean": "time_mean_s",
                          "min": "time_min_s", "max": "time_max_s", "stddev": "time_stddev_s"}


class SourceError(ValueError):
    """A path that is neither a run directory nor a pytest-benchmark JSON file."""


@dataclass
class Source:
    """One run: where it came from, its metadata and its result rows."""

    path: Path
    kind: str  # "run" (a run directory) or "pytest-benchmark"
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @property
    def suite(self) -> dict[str, Any]:
        suite = self.meta.get("suite")
        return suite if isinstance(suite, dict) else {}

    @property
    def contracts(self) -> list[dict[str, Any]]:
        contracts = self.suite.get("contracts")
        return contracts if isinstance(contracts, list) else []


def load_source(path: str | os.PathLike) -> Source:
    """A run directory (``meta.json`` + ``results.jsonl``) or a pytest-benchmark JSON file."""
    path = Path(path)
    if path.is_dir():
        return _load_run_dir(path)
    if path.is_file():
        if path.name == META_FILE or path.name == RESULTS_FILE:
            return _load_run_dir(path.parent)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(f"{path}: not JSON ({exc})") from None
        if is_pytest_benchmark(data):
            return _from_pytest_benchmark(path, data)
        raise SourceError(f"{path}: a JSON file, but not pytest-benchmark output "
                          "(no 'benchmarks' list with 'machine_info')")
    raise SourceError(f"{path}: no such run directory or file")


def load_sources(paths: list[str | os.PathLike]) -> list[Source]:
    return [load_source(p) for p in paths]


def _load_run_dir(path: Path) -> Source:
    store = RunStore(path)
    if not store.exists() and not store.results_path.is_file():
        raise SourceError(f"{path}: not a run directory (no {META_FILE} or {RESULTS_FILE})")
    meta: dict[str, Any] = {}
    if store.exists():
        try:
            meta = store.read_meta()
        except StoreError as exc:
            raise SourceError(str(exc)) from None
    rows = [row for row in store.rows() if isinstance(row, dict)]
    if not meta.get("run_id") and rows:
        meta = {**meta, "run_id": rows[0].get("run_id")}
    return Source(path=path, kind="run", meta=meta, rows=latest_per_case(rows))


def latest_per_case(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case_id, the last written (a case re-run after a crash replaces the first)."""
    by_id: dict[Any, dict[str, Any]] = {}
    anonymous = []
    for row in rows:
        case_id = row.get("case_id")
        if case_id is None:
            anonymous.append(row)
        else:
            by_id.pop(case_id, None)  # keep file order of the last occurrence
            by_id[case_id] = row
    return anonymous + list(by_id.values())


# --------------------------------------------------------------------------------------------
# pytest-benchmark
# --------------------------------------------------------------------------------------------


def is_pytest_benchmark(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("benchmarks"), list)
            and "machine_info" in data)


def _from_pytest_benchmark(path: Path, data: dict[str, Any]) -> Source:
    machine = data.get("machine_info") or {}
    commit = data.get("commit_info") or {}
    run_id = f"{path.stem}"
    cpu = machine.get("cpu") or {}
    meta = {
        "run_id": run_id,
        "suite": {"name": f"pytest-benchmark {path.name}",
                  "description": "pytest-benchmark JSON output"},
        "environment": {
            "python": machine.get("python_version"),
            "packages": {"pytest-benchmark": data.get("version")},
            "cpu": cpu.get("brand_raw") if isinstance(cpu, dict) else cpu,
            "hostname": machine.get("node"),
            "platform": " ".join(str(machine.get(k, "")) for k in ("system", "release")).strip(),
            "git_commit": commit.get("id"),
            "gpu": None,
        },
        "started_at": data.get("datetime"),
        "source_format": "pytest-benchmark",
    }
    rows = [_pytest_benchmark_row(run_id, bench) for bench in data["benchmarks"]
            if isinstance(bench, dict)]
    return Source(path=path, kind="pytest-benchmark", meta=meta, rows=rows)


def _pytest_benchmark_row(run_id: str, bench: dict[str, Any]) -> dict[str, Any]:
    params = bench.get("params") or {}
    extra = bench.get("extra_info") or {}
    stats = bench.get("stats") or {}
    case: dict[str, Any] = {}
    for source in (params, extra):
        if isinstance(source, dict):
            case.update({k: v for k, v in source.items() if k in CASE_FIELDS})
    case.setdefault("variant", str(bench.get("name", "?")).split("[")[0])
    case.setdefault("framework", "?")
    case.setdefault("mode", str(bench.get("group") or "benchmark"))
    case["options"] = {"benchmark": bench.get("fullname") or bench.get("name")}
    metrics: dict[str, Any] = {}
    for stat, metric in PYTEST_BENCHMARK_STATS.items():
        if isinstance(stats.get(stat), int | float):
            metrics[metric] = stats[stat]
    if isinstance(stats.get("rounds"), int):
        metrics["time_repeats"] = stats["rounds"]
    if isinstance(stats.get("data"), list):
        metrics["time_samples_s"] = stats["data"]
    if metrics.get("time_median_s") and metrics.get("time_iqr_s") is not None:
        metrics["time_rel_iqr"] = metrics["time_iqr_s"] / metrics["time_median_s"]
    if isinstance(extra, dict):
        metrics.update({k: v for k, v in extra.items()
                        if k not in CASE_FIELDS and k not in ("status", "error")})
    name = str(bench.get("fullname") or bench.get("name"))
    return {
        "schema": 1,
        "run_id": run_id,
        "case_id": hashlib.sha256(name.encode()).hexdigest()[:12],
        "case": case,
        "status": extra.get("status", "ok") if isinstance(extra, dict) else "ok",
        "error": extra.get("error") if isinstance(extra, dict) else None,
        "metrics": metrics,
        "started_at": None,
        "wall_s": None,
    }


# --------------------------------------------------------------------------------------------
# Small helpers every consumer of rows needs
# --------------------------------------------------------------------------------------------

_MODE_ABBREV = {"forward": "fwd", "forward-backward": "fb", "train-step": "train"}


def _resolved_kernel(case: dict[str, Any]) -> str | None:
    """The LSH kernel a stored case ran (as Case.resolved_kernel; None if it cannot say)."""
    from attnbench.spec import resolve_kernel

    try:
        return resolve_kernel(case["kernel"], case["framework"],
                              str(case.get("device", "cpu")).partition(":")[0])
    except (KeyError, TypeError, ValueError):
        return None


def case_label(case: dict[str, Any]) -> str:
    """``lsh/torch fb L=4096 h=4``, tolerant of missing fields (as Case.label, for dicts)."""
    mode = case.get("mode", "?")
    parts = [f"{case.get('variant', '?')}/{case.get('framework', '?')}",
             _MODE_ABBREV.get(mode, str(mode)), f"L={case.get('length', '?')}"]
    if case.get("batch", 1) not in (1, None):
        parts.append(f"B={case['batch']}")
    if case.get("depth", 1) not in (1, None):
        parts.append(f"depth={case['depth']}")
    if case.get("n_hashes") is not None:
        parts.append(f"h={case['n_hashes']}")
    kernel = _resolved_kernel(case)
    if kernel not in (None, "portable"):
        parts.append(kernel)
    if case.get("n_buckets") is not None and case.get("mode") == "approx":
        parts.append(f"b={case['n_buckets']}")
    options = case.get("options") or {}
    if isinstance(options, dict) and options.get("train_attention"):
        parts.append(f"train={options['train_attention']}")
    if case.get("device", "cpu") != "cpu":
        parts.append(str(case.get("device")))
    if case.get("dtype", "float32") != "float32":
        parts.append(str(case.get("dtype")))
    return " ".join(parts)


def row_case(row: dict[str, Any]) -> dict[str, Any]:
    case = row.get("case")
    return case if isinstance(case, dict) else {}


def row_metrics(row: dict[str, Any]) -> dict[str, Any]:
    metrics = row.get("metrics")
    return metrics if isinstance(metrics, dict) else {}
