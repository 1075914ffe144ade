"""The run's metadata (``meta.json``) as one typed schema, used by its writer and every reader.

``attnbench run`` writes a :class:`RunMeta` once when a run starts (:meth:`RunStore.create
<attnbench.store.RunStore.create>`); the report, ``compare`` and ``check`` read it back with
:meth:`RunMeta.from_dict`, which refuses a key the schema does not know (a writer and a reader
that disagree fail loudly instead of showing ``-``). A key the schema knows but a file lacks
reads as its default, so a run written before a field existed still loads.

Nothing here imports torch or jax; :func:`attnbench.measure.environment.capture` fills
:class:`Environment`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class MetaError(ValueError):
    """A ``meta.json`` (or a part of it) that does not follow the schema."""


def _known(cls, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MetaError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MetaError(f"{where}: unknown key(s) {unknown}; the schema has {sorted(names)}")
    return data


def _typed(data: dict, where: str, types: dict[str, type]) -> None:
    """Refuse a field of the wrong type (null is always allowed), naming it: a reader that
    trusts the schema must not meet a number where text belongs."""
    import math

    for name, kind in types.items():
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise MetaError(f"{where}.{name}: {value!r:.80} is not of the schema's type")
        if isinstance(value, float) and not math.isfinite(value):
            raise MetaError(f"{where}.{name}: {value!r} must be finite")


@dataclass(frozen=True)
class GitInfo:
    """The attnbench checkout a run measured with."""

    sha: str | None = None
    dirty: bool | None = None   # uncommitted changes to tracked files
    committed_at: str | None = None   # the commit's date (ISO 8601): orders a history

    @classmethod
    def from_dict(cls, data: Any, where: str = "git") -> GitInfo:
        data = _known(cls, data, where)
        _typed(data, where, {"sha": str, "dirty": bool, "committed_at": str})
        return cls(**data)

    @property
    def short(self) -> str | None:
        if not self.sha:
            return None
        return self.sha[:10] + ("+dirty" if self.dirty else "")


@dataclass(frozen=True)
class Environment:
    """Where a run measured: interpreter, machine, versions, threads, GPU, commit, settings."""

    python: str | None = None
    executable: str | None = None
    platform: str | None = None
    hostname: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    cpu_affinity: int | None = None       # CPUs this process may run on
    memory_total_mb: float | None = None
    # The threads a framework starts with in a fresh process here (torch.get_num_threads());
    # a case's ``threads`` overrides it, and each row records ``threads_used``.
    threads: int | None = None
    packages: dict[str, str | None] = field(default_factory=dict)
    git: GitInfo = field(default_factory=GitInfo)
    env_vars: dict[str, str] = field(default_factory=dict)
    gpu: list[dict[str, Any]] | None = None   # NVML's devices; None without a driver
    frameworks: dict[str, Any] | None = None  # the torch / jax probe; None when not probed

    @classmethod
    def from_dict(cls, data: Any, where: str = "environment") -> Environment:
        data = dict(_known(cls, data, where))
        _typed(data, where, {"python": str, "executable": str, "platform": str,
                             "hostname": str, "cpu": str, "cpu_count": int,
                             "cpu_affinity": int, "memory_total_mb": int | float,
                             "threads": int, "packages": dict, "env_vars": dict,
                             "gpu": list, "frameworks": dict})
        if "git" in data:
            data["git"] = GitInfo.from_dict(data["git"] or {}, f"{where}.git")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def machine(self, frameworks: Iterable[str] | None = None) -> dict[str, Any]:
        """The parts of this environment that decide how fast a case runs, each present only
        where recorded (and of the right type; a hand-edited ``meta.json`` may hold anything):

        * ``cpu``: the CPU model; ``cpu_count``: the machine's CPUs (not this process's
          affinity: a case records the threads it used);
        * ``memory_total_gib``: total memory rounded to whole GiB (the kernel's reserve
          differs by some MiB between machines of one type);
        * ``gpus``: the GPU names, in NVML's index order (not UUIDs or the driver);
        * ``torch``, ``jax``, ``jaxlib``: the versions ``packages`` records (not installed:
          absent); given ``frameworks`` (the frameworks of the cases in question), only
          theirs: jax's version does not decide how fast a torch case runs, so upgrading jax
          must not make a torch series another machine's.

        Not the hostname (CI runners of one type differ only by it), the Python, the
        settings or the commit: two runs whose shared parts are equal measured on the same
        kind of machine. ``attnbench compare`` refuses to judge across a difference (unless
        asked to); kept as separate parts, not a hash, so a difference can be named, and a
        history of runs can key on it.
        """
        parts: dict[str, Any] = {}
        if isinstance(self.cpu, str) and self.cpu:
            parts["cpu"] = self.cpu
        if isinstance(self.cpu_count, int) and not isinstance(self.cpu_count, bool):
            parts["cpu_count"] = self.cpu_count
        memory = self.memory_total_mb
        if (isinstance(memory, int | float) and not isinstance(memory, bool)
                and math.isfinite(memory)):
            parts["memory_total_gib"] = round(memory / 1024)
        if isinstance(self.gpu, list):
            parts["gpus"] = [str(d.get("name")) for d in self.gpu if isinstance(d, dict)]
        packages = self.packages if isinstance(self.packages, dict) else {}
        wanted = None if frameworks is None else set(frameworks)
        for name in (name for framework, names in FRAMEWORK_PACKAGES.items()
                     if wanted is None or framework in wanted for name in names):
            if isinstance(packages.get(name), str):
                parts[name] = packages[name]
        return parts


# The packages whose versions are part of Environment.machine(), by the framework they run.
FRAMEWORK_PACKAGES = {"torch": ("torch",), "jax": ("jax", "jaxlib")}


@dataclass(frozen=True)
class SuiteInfo:
    """The suite a run measured, as parsed (so a run says what it asked for)."""

    name: str = ""
    description: str = ""
    path: str | None = None
    digest: str | None = None          # hash of the suite's case ids: resume checks it
    n_cases: int | None = None
    contracts: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # the parsed TOML

    @classmethod
    def from_dict(cls, data: Any, where: str = "suite") -> SuiteInfo:
        data = _known(cls, data, where)
        for name in ("name", "description"):
            if not isinstance(data.get(name, ""), str):
                raise MetaError(f"{where}: {name} must be a string, not {data[name]!r}")
        contracts = data.get("contracts", [])
        if not isinstance(contracts, list) or not all(isinstance(c, dict) for c in contracts):
            raise MetaError(f"{where}: contracts must be a list of objects, not {contracts!r}")
        return cls(**data)


@dataclass(frozen=True)
class RunMeta:
    """``meta.json``: written once when a run starts."""

    run_id: str
    started_at: str | None = None      # ISO 8601, UTC
    argv: list[str] = field(default_factory=list)
    suite: SuiteInfo = field(default_factory=SuiteInfo)
    environment: Environment | None = None   # None: the source recorded none
    workers: str | None = None         # "warm" or "cold" as the run started (rows: ``worker``)
    compile_cache: str | None = None   # the compile cache's root; None: off or not recorded
    schema: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str = "meta.json") -> RunMeta:
        data = dict(_known(cls, data, where))
        if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise MetaError(f"{where}: schema {data.get('schema')!r}, this attnbench reads "
                            f"schema {SCHEMA_VERSION}")
        if not isinstance(data.get("run_id"), str) or not data["run_id"]:
            raise MetaError(f"{where}: run_id must be a non-empty string, "
                            f"got {data.get('run_id')!r}")
        argv = data.get("argv", [])
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise MetaError(f"{where}: argv must be a list of strings, not {argv!r}")
        if "suite" in data:
            data["suite"] = SuiteInfo.from_dict(data["suite"] or {}, f"{where}: suite")
        if data.get("environment") is not None:
            data["environment"] = Environment.from_dict(data["environment"],
                                                        f"{where}: environment")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
