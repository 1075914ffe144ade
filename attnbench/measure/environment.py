"""The environment a run measured in: versions, CPU, threads, GPU, commit, settings.

Captured by the parent (``attnbench run``, ``attnbench env``) without importing torch or jax
into it: framework facts come from a short-lived subprocess, so the parent never touches an
accelerator and its own memory stays out of every measurement.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from attnbench.meta import Environment, GitInfo

PACKAGES = ("attnbench", "numpy", "torch", "jax", "jaxlib", "optax", "pandas", "seaborn",
            "pytest-benchmark", "nvidia-ml-py")
# Settings that change what a measurement means (threads, allocators, XLA, TF32).
ENV_PREFIXES = ("XLA_", "JAX_", "TF_", "CUDA_", "PYTORCH_", "TORCH_", "NVIDIA_TF32",
                "OMP_", "MKL_", "OPENBLAS_", "TRITON_")
# Never recorded, whatever the prefix: Terraform shares TF_ (TF_TOKEN_*, TF_VAR_*), and any
# name that looks like a credential stays out of meta.json and the published report.
SECRET_PREFIXES = ("TF_TOKEN_", "TF_VAR_", "TF_CLI_", "TF_HTTP_")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "KEY")


def recorded_env_vars(environ) -> dict[str, str]:
    """The settings that decide speed (:data:`ENV_PREFIXES`), never a credential."""
    return {k: v for k, v in sorted(environ.items()) if k.startswith(ENV_PREFIXES)
            and not k.startswith(SECRET_PREFIXES)
            and not any(word in k.upper() for word in SECRET_WORDS)}

_PROBE = r"""
import json, sys
out = {}
try:
    import torch
    out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                    "cuda_available": torch.cuda.is_available(),
                    "threads": torch.get_num_threads(),
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                    "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if torch.cuda.is_available():
        out["torch"]["devices"] = [torch.cuda.get_device_name(i)
                                   for i in range(torch.cuda.device_count())]
except Exception as exc:
    out["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
try:
    import jax
    out["jax"] = {"version": jax.__version__, "backend": jax.default_backend(),
                  "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()]}
except Exception as exc:
    out["jax"] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: str | os.PathLike | None = None) -> GitInfo:
    """The commit of the attnbench checkout (and whether it had uncommitted changes)."""
    root = Path(cwd) if cwd else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip() != ""
        committed_at = subprocess.run(["git", "show", "-s", "--format=%cI", "HEAD"], cwd=root,
                                      capture_output=True, text=True, timeout=10,
                                      check=True).stdout.strip() or None
        return GitInfo(sha=sha, dirty=dirty, committed_at=committed_at)
    except (OSError, subprocess.SubprocessError):
        return GitInfo()


def framework_facts(timeout: float = 120.0) -> dict:
    """torch and jax facts from a subprocess (the caller never imports either)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as exc:
        return {"error": f"framework probe failed: {type(exc).__name__}: {exc}"}


def capture(probe_frameworks: bool = True) -> Environment:
    """Everything a reader needs to know about where a run measured."""
    from attnbench.measure import nvml

    frameworks = framework_facts() if probe_frameworks else None
    torch_facts = (frameworks or {}).get("torch") or {}
    return Environment(
        python=sys.version.split()[0],
        executable=sys.executable,
        platform=platform.platform(),
        hostname=socket.gethostname(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        memory_total_mb=_memory_total_mb(),
        threads=torch_facts.get("threads"),
        packages=package_versions(),
        git=git_commit(),
        env_vars=recorded_env_vars(os.environ),
        gpu=nvml.devices(),
        frameworks=frameworks,
    )


def _memory_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def node_facts(device: str = "cpu") -> dict:
    """The machine a case ran on, as row metrics (a cluster is heterogeneous): host, CPU and,
    for a CUDA case, the GPU it used (name, UUID, driver), seen through the
    ``CUDA_VISIBLE_DEVICES`` a scheduler such as Ray set."""
    from attnbench.measure import nvml

    facts = {"node_host": socket.gethostname(), "node_cpu": cpu_model(),
             "node_gpu_name": None, "node_gpu_uuid": None, "node_gpu_driver": None}
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return facts
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    logical = int(index or 0)
    physical = visible[logical] if logical < len(visible) else str(logical)
    for gpu in nvml.devices() or []:
        if physical in (str(gpu["index"]), gpu["uuid"]):
            facts.update(node_gpu_name=gpu["name"], node_gpu_uuid=gpu["uuid"],
                         node_gpu_driver=gpu["driver"])
    return facts
