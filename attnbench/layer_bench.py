"""Layer benchmark: one self-attention layer, forward + backward, batch 1.

Each case (impl, length, n_hashes) runs in a fresh subprocess
(``python -m attnbench.layer_bench --worker <json>``) so that its memory reading starts
clean and an out-of-memory kill, a crash or a hang becomes a table row with status
``oom`` / ``error`` / ``timeout`` instead of ending the run.

Usage::

    python -m attnbench.layer_bench --impls lsh,full-fused --lengths 1024,4096 --n-hashes 1,4

Registry
    ``register(name, hashed=True, framework="torch")(make)`` adds an implementation;
    ``args`` below is the :class:`Case` (``d_model``, ``heads``, ``chunk_len``,
    ``n_buckets``, ``device``, ``seed``...). ``hashed=False`` marks implementations that
    ignore ``n_hashes``; they run once per length. The worker imports only the framework
    the implementation names (a JAX row never imports torch, and vice versa).

    torch: ``make(length, n_hashes, args)`` returns ``(module, x)`` or ``(module, x, info)``:
    ``x`` is a float32 ``[1, length, d_model]`` input with ``requires_grad=True`` and
    ``info`` an optional dict merged into the result row (e.g. ``{"n_buckets": 256}`` when
    an implementation picks its own bucket count). The step is
    ``module(x).sum().backward()``.

    jax: ``make`` returns a :class:`JaxLayer`: a pure ``apply(params, x, key) -> y`` (the
    spec closed over), its parameter pytree and input. The step is
    ``jax.jit(jax.grad(loss, argnums=(0, 1)))`` of ``loss = sum(apply(params, x, key))``,
    with a new PRNG key passed in each step (LSH draws fresh rotations, as torch does).

Plugins
    Builders defined outside this module reach the worker subprocess through plugins: a
    dotted module name or a path to a ``.py`` file, given with ``--plugin`` (repeatable)
    and carried to the worker in the case JSON (``"plugins": [...]``). The worker imports
    each plugin before looking up the implementation, so the plugin must register its
    builders at import time and keep its own ``main()`` behind ``if __name__ ==
    "__main__"``. ``benchmarks/lsh_layer_vs_peers.py`` is an example.

Measurements
    Time: ``warmup`` untimed steps, then ``repeats`` steps timed with
    ``time.perf_counter``, each step ending with a synchronisation (CUDA for torch,
    ``jax.block_until_ready`` on the whole gradient output for JAX); median and
    interquartile range in seconds. JAX rows also record ``lower_s`` (tracing and lowering)
    and ``compile_s`` (``lowered.compile()``), both outside the timed steps, and
    ``xla_temp_MB``, XLA's planned temporary buffer size from ``memory_analysis()``
    (``None`` where the backend does not report it).
    Memory (CPU): peak resident set during the timed steps minus the resident set just
    before the first warm-up step. The peak is ``VmHWM`` from ``/proc/self/status`` after
    resetting it (writing ``5`` to ``/proc/self/clear_refs``) once the warm-up is done.
    If the reset fails the row says ``rss_reset: false`` and the peak is ``ru_maxrss``,
    which can also include peaks from before the timed steps (import, build, warm-up).
    JAX rows on the CPU use the same method (``mem_method`` says which).
    Memory (CUDA, torch): ``max_memory_allocated()`` after ``reset_peak_memory_stats()``
    minus ``memory_allocated()`` before the first warm-up step.
    Memory (GPU, JAX): the device's ``memory_stats()["peak_bytes_in_use"]`` after the
    timed steps minus ``bytes_in_use`` before the first warm-up step. JAX cannot reset the
    peak, so it also covers the warm-up steps and anything before (compilation and
    autotuning allocate on the device too): when the peak was already reached before the
    warm-up, ``mem_method`` says the value is an upper bound. Workers run with
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false``.

Devices
    ``--device cuda[:N]`` for a JAX row means JAX's GPU N; if JAX has no GPU backend the
    row is an ``error`` naming the problem, never a CPU measurement. JAX rows record the
    device JAX actually ran on (``platform``, ``device_kind``). ``--threads`` caps torch
    with ``torch.set_num_threads`` and JAX on the CPU by restricting the worker's CPU
    affinity to that many cores before importing jax (XLA sizes its thread pool from it).

torch and jax are imported only inside functions, so the parent process (and ``--help``)
stays light and never touches the accelerator.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 300.0

# The directory that holds the ``attnbench`` package; the worker subprocess needs it on
# PYTHONPATH when the package is not installed.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- registry


FRAMEWORKS = ("torch", "jax")


@dataclass(frozen=True)
class Impl:
    name: str
    make: Callable[..., Any]
    hashed: bool
    framework: str = "torch"


@dataclass
class JaxLayer:
    """What a JAX builder returns: a pure ``apply(params, x, key) -> y`` and its arguments."""

    apply: Callable[..., Any]
    params: Any
    x: Any
    info: dict = field(default_factory=dict)


REGISTRY: dict[str, Impl] = {}


def register(
    name: str, hashed: bool = True, framework: str = "torch"
) -> Callable[[Callable], Callable]:
    """Decorator adding ``make(length, n_hashes, args)`` to the registry under ``name``."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r}: must be one of {', '.join(FRAMEWORKS)}")

    def deco(make: Callable) -> Callable:
        REGISTRY[name] = Impl(name=name, make=make, hashed=hashed, framework=framework)
        return make

    return deco


def load_plugin(ref: str) -> None:
    """Import a plugin given as a dotted module name or a path to a ``.py`` file."""
    if ref.endswith(".py") or os.sep in ref:
        path = Path(ref).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"plugin file not found: {ref!r}")
        mod_name = f"_attnbench_plugin_{path.stem}"
        if mod_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]  # a later retry must run the file again
            raise
    else:
        importlib.import_module(ref)


def get_impl(name: str) -> Impl:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise KeyError(f"unknown implementation {name!r} (known: {known})") from None


def make_input(length: int, args: Case):
    """The float32 ``[1, length, d_model]`` input every builder should use."""
    import torch

    return torch.randn(1, length, args.d_model, device=args.device, requires_grad=True)


def _lsh_spec(n_hashes: int, args: Case):
    from attnbench.spec import AttentionSpec

    return AttentionSpec(
        kind="lsh",
        n_heads=args.heads,
        causal=False,
        n_hashes=n_hashes,
        n_buckets=args.n_buckets,
        chunk_len=args.chunk_len,
    )


def _full_spec(impl: str, args: Case):
    from attnbench.spec import AttentionSpec

    return AttentionSpec(kind="full", n_heads=args.heads, causal=False, impl=impl)


def _torch_layer(layer_class: str, spec, length: int, args: Case):
    import importlib

    import torch

    module, name = layer_class.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    layer = cls(d_model=args.d_model, spec=spec, device=args.device, dtype=torch.float32)
    return layer, make_input(length, args)


@register("lsh")
def _make_lsh(length: int, n_hashes: int, args: Case):
    return _torch_layer("attnbench.torch_impl.lsh_attention.LSHSelfAttention",
                        _lsh_spec(n_hashes, args), length, args)


def _make_full(impl: str):
    def make(length: int, n_hashes: int, args: Case):
        return _torch_layer("attnbench.torch_impl.full_attention.FullSelfAttention",
                            _full_spec(impl, args), length, args)

    return make


register("full-fused", hashed=False)(_make_full("fused"))
register("full-naive", hashed=False)(_make_full("naive"))


def _jax_layer(init, apply, spec, length: int, args: Case) -> JaxLayer:
    """Parameters and a float32 ``[1, length, d_model]`` input drawn from ``args.seed``."""
    import jax
    import jax.numpy as jnp

    param_key, x_key = jax.random.split(jax.random.key(args.seed))
    x = jax.random.normal(x_key, (1, length, args.d_model), jnp.float32)

    def apply_spec(params, x, key):
        return apply(params, x, spec=spec, key=key)

    return JaxLayer(apply_spec, init(param_key, args.d_model, spec), x)


@register("jax-lsh", framework="jax")
def _make_jax_lsh(length: int, n_hashes: int, args: Case) -> JaxLayer:
    from attnbench.jax_impl.lsh_attention import init_lsh_self_attention, lsh_self_attention

    spec = _lsh_spec(n_hashes, args)
    return _jax_layer(init_lsh_self_attention, lsh_self_attention, spec, length, args)


def _make_jax_full(impl: str):
    def make(length: int, n_hashes: int, args: Case) -> JaxLayer:
        from attnbench.jax_impl.full_attention import (
            full_self_attention,
            init_full_self_attention,
        )

        spec = _full_spec(impl, args)
        return _jax_layer(init_full_self_attention, full_self_attention, spec, length, args)

    return make


register("jax-full-fused", hashed=False, framework="jax")(_make_jax_full("fused"))
register("jax-full-naive", hashed=False, framework="jax")(_make_jax_full("naive"))


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    impl: str
    length: int
    n_hashes: int | None
    d_model: int = 256
    heads: int = 4
    chunk_len: int = 64
    n_buckets: int | None = None  # resolved: ``auto`` is turned into a number by expand_cases
    repeats: int = 5
    warmup: int = 1
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    plugins: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown case field(s) {unknown}")
        return cls(**data)


def auto_buckets(length: int, chunk_len: int) -> int:
    """Two buckets per chunk (the Reformer recommendation), at least 2 and even."""
    n = 2 * (length // chunk_len)
    return max(2, n)


def expand_cases(
    impls: Sequence[str],
    lengths: Sequence[int],
    n_hashes: Sequence[int],
    n_buckets: int | None,
    **common: Any,
) -> list[Case]:
    """One case per (impl, length, n_hashes); un-hashed impls once per length."""
    cases = []
    for length in lengths:
        for name in impls:
            impl = get_impl(name)
            buckets = (
                n_buckets
                if n_buckets is not None
                else auto_buckets(length, common.get("chunk_len", 64))
            )
            for h in n_hashes if impl.hashed else [None]:
                cases.append(
                    Case(
                        impl=name,
                        length=length,
                        n_hashes=h,
                        n_buckets=buckets if impl.hashed else None,
                        **common,
                    )
                )
    return cases


# --------------------------------------------------------------------------- worker


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _current_rss_mb() -> float:
    try:
        return _proc_status_kb("VmRSS") / 1024
    except (OSError, KeyError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "not enough memory" in text


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


class _CpuMemory:
    """Resident-set growth: VmHWM (reset after the warm-up) minus VmRSS before the warm-up."""

    def start(self) -> None:
        self.base = _current_rss_mb()

    def after_warmup(self) -> None:
        self.reset = _reset_hwm()

    def result(self) -> dict:
        if self.reset:
            peak, method = _proc_status_kb("VmHWM") / 1024, "vmhwm"
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            method = "ru_maxrss (not reset: may include pre-step peaks)"
        return {
            "mem_MB": peak - self.base,
            "mem_base_MB": self.base,
            "mem_method": method,
            "rss_reset": self.reset,
        }


class _TorchCudaMemory:
    """``max_memory_allocated`` (reset after the warm-up) minus allocated before it."""

    def __init__(self, torch) -> None:
        self.cuda = torch.cuda

    def start(self) -> None:
        self.cuda.synchronize()
        self.base = self.cuda.memory_allocated() / 2**20

    def after_warmup(self) -> None:
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        return {
            "mem_MB": self.cuda.max_memory_allocated() / 2**20 - self.base,
            "mem_base_MB": self.base,
            "mem_method": "cuda_max_allocated",
            "rss_reset": None,
        }


class _JaxDeviceMemory:
    """``peak_bytes_in_use`` after the timed steps minus ``bytes_in_use`` before the warm-up.

    JAX has no peak reset: the peak also covers the warm-up and everything before it.
    """

    def __init__(self, device) -> None:
        self.device = device

    def _stats(self) -> dict | None:
        stats = self.device.memory_stats()
        return stats if stats and "peak_bytes_in_use" in stats else None

    def start(self) -> None:
        stats = self._stats()
        self.base = None if stats is None else stats["bytes_in_use"] / 2**20
        self.peak_before = None if stats is None else stats["peak_bytes_in_use"] / 2**20

    def after_warmup(self) -> None:
        pass

    def result(self) -> dict:
        stats = self._stats()
        if stats is None or self.base is None:
            return {
                "mem_MB": None,
                "mem_base_MB": None,
                "rss_reset": None,
                "mem_method": f"none ({self.device.platform} reports no memory_stats)",
            }
        peak = stats["peak_bytes_in_use"] / 2**20
        method = "jax peak_bytes_in_use - bytes_in_use before warm-up (no reset)"
        if peak <= self.peak_before:
            method += "; peak reached before the warm-up (compile/autotune?): upper bound"
        return {
            "mem_MB": peak - self.base,
            "mem_base_MB": self.base,
            "mem_method": method,
            "rss_reset": None,
            "mem_peak_before_MB": self.peak_before - self.base,
        }


def _time_steps(case: Case, step: Callable[[], None], memory) -> dict:
    """Warm-up, then ``case.repeats`` timed calls of ``step`` (which must synchronise)."""
    memory.start()
    for _ in range(case.warmup):
        step()
    memory.after_warmup()
    times = []
    for _ in range(case.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "status": "ok",
        "median_s": statistics.median(times),
        "iqr_s": _iqr(times),
        "times_s": times,
        **memory.result(),
    }


def measure(case: Case) -> dict:
    """Build and time one case in this process. Raises on failure."""
    impl = get_impl(case.impl)  # before importing a framework: a bad name fails fast
    return (_measure_jax if impl.framework == "jax" else _measure_torch)(case, impl)


def _measure_torch(case: Case, impl: Impl) -> dict:
    import torch

    torch.set_num_threads(case.threads)
    torch.manual_seed(case.seed)
    built = impl.make(case.length, case.n_hashes, case)
    module, x = built[0], built[1]
    info = dict(built[2]) if len(built) > 2 else {}
    module.train()
    cuda = case.device.startswith("cuda")
    params = list(module.parameters())

    def step() -> None:
        # Fresh gradient buffers each step, as after optimizer.zero_grad(set_to_none=True).
        x.grad = None
        for p in params:
            p.grad = None
        module(x).sum().backward()
        if cuda:
            torch.cuda.synchronize()

    row = _time_steps(case, step, _TorchCudaMemory(torch) if cuda else _CpuMemory())
    row.update(
        framework="torch",
        platform=x.device.type,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    row.update(info)
    return row


def _limit_cpu_threads(threads: int) -> None:
    """Pin this process to its first ``threads`` allowed CPUs; XLA sizes its pool from that."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])


def _jax_device(jax, device: str):
    """The JAX device for ``cpu`` or ``cuda[:N]``; never falls back to the CPU."""
    if device == "cpu":
        return jax.devices("cpu")[0]
    index = int(device.partition(":")[2] or 0)
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as exc:
        raise RuntimeError(
            f"--device {device} asked but JAX has no GPU backend (jax {jax.__version__}, "
            f"default backend {jax.default_backend()!r}; a CUDA jaxlib is needed); "
            f"not measuring on the CPU instead [{exc}]"
        ) from None
    if index >= len(gpus):
        raise RuntimeError(f"--device {device} asked but JAX sees {len(gpus)} GPU(s)")
    return gpus[index]


def _measure_jax(case: Case, impl: Impl) -> dict:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if case.device == "cpu" and "jax" not in sys.modules:
        _limit_cpu_threads(case.threads)
    import jax
    import jax.numpy as jnp

    device = _jax_device(jax, case.device)
    with jax.default_device(device):
        layer = impl.make(case.length, case.n_hashes, case)
        if not isinstance(layer, JaxLayer):
            raise TypeError(
                f"{case.impl}: a jax builder must return a JaxLayer, got {type(layer).__name__}"
            )
        # One distinct key per step, made before timing: LSH draws new rotations each step.
        keys = list(jax.random.split(jax.random.key(case.seed + 1), case.warmup + case.repeats))
    params, x, keys = jax.device_put((layer.params, layer.x, keys), device)

    def loss(params, x, key):
        return jnp.sum(layer.apply(params, x, key))

    t0 = time.perf_counter()
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, keys[0])
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    try:
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # noqa: BLE001 - not every backend or version reports it
        temp = None
    next_key = iter(keys).__next__

    def step() -> None:
        # The gradients are dropped at once, as torch's are set to None before each step.
        jax.block_until_ready(compiled(params, x, next_key()))

    memory = _CpuMemory() if device.platform == "cpu" else _JaxDeviceMemory(device)
    row = _time_steps(case, step, memory)
    row.update(
        framework="jax",
        platform=device.platform,
        device_kind=device.device_kind,
        jax=jax.__version__,
        threads=len(os.sched_getaffinity(0)) if device.platform == "cpu" else None,
        lower_s=lower_s,
        compile_s=compile_s,
        xla_temp_MB=temp,
    )
    row.update(layer.info)
    return row


def worker_main(case_json: str) -> int:
    """Entry point of the subprocess: prints exactly one JSON row as the last stdout line."""
    try:
        case = Case.from_json(case_json)
        for ref in case.plugins:
            load_plugin(ref)
        row = measure(case)
    except BaseException as exc:  # noqa: BLE001 - every failure must become a row
        row = {
            "status": "oom" if _is_oom(exc) else "error",
            "error": f"{type(exc).__name__}: {exc}"[:500],
        }
    sys.stdout.flush()
    print(json.dumps(row), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # JAX must not grab most of the GPU up front (memory readings, and room for the rest).
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    parts = [str(_PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def base_row(case: Case) -> dict:
    return {
        "impl": case.impl,
        "length": case.length,
        "n_hashes": case.n_hashes,
        "n_buckets": case.n_buckets,
        "device": case.device,
        "threads": case.threads,
        "repeats": case.repeats,
    }


def run_case(case: Case, timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run one case in a fresh subprocess; never raises for a failing case."""
    row = base_row(case)
    cmd = [sys.executable, "-m", "attnbench.layer_bench", "--worker", case.to_json()]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env()
        )
    except subprocess.TimeoutExpired:
        row.update(status="timeout", error=f"no result within {timeout:g} s")
        return row
    result = _last_json_line(proc.stdout)
    if result is not None:
        row.update(result)
    elif proc.returncode == -signal.SIGKILL:
        row.update(status="oom", error="worker killed by SIGKILL (likely the OOM killer)")
    else:
        tail = proc.stderr.strip().splitlines()[-3:]
        row.update(
            status="error",
            error=f"worker exited with code {proc.returncode}: {' | '.join(tail)}"[:500],
        )
    return row


def run_cases(
    cases: Iterable[Case], timeout: float = DEFAULT_TIMEOUT_S, progress: bool = True
) -> list[dict]:
    cases = list(cases)
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    bar = tqdm(total=len(cases), file=sys.stderr, disable=not progress) if tqdm else None
    for i, case in enumerate(cases):
        label = f"{case.impl} L={case.length} h={case.n_hashes if case.n_hashes else '-'}"
        if bar is not None:
            bar.set_description(label)
        elif progress:
            print(f"[{i + 1}/{len(cases)}] {label}", file=sys.stderr, flush=True)
        rows.append(run_case(case, timeout=timeout))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


# --------------------------------------------------------------------------- output

TABLE_COLUMNS = (
    "impl",
    "length",
    "n_hashes",
    "n_buckets",
    "status",
    "median_s",
    "iqr_s",
    "mem_MB",
    "compile_s",
)
CSV_COLUMNS = TABLE_COLUMNS + (
    "mem_base_MB",
    "threads",
    "device",
    "platform",
    "device_kind",
    "repeats",
    "mem_method",
    "rss_reset",
    "framework",
    "lower_s",
    "xla_temp_MB",
    "torch",
    "jax",
    "error",
)

# (numerator, denominator, target) printed after the table when both ran; ``target`` is
# the bound on the time ratio (None: informative only).
RATIOS = (("lsh", "full-fused", None), ("jax-lsh", "lsh", 1.5))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A plain fixed-width table; failed rows get their error on a following line."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row, line in zip(rows, cells, strict=True):
        lines.append("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))
        if row.get("status") != "ok" and row.get("error"):
            lines.append(f"    ^ {row['error']}")
    return "\n".join(lines)


def find_row(
    rows: Sequence[dict], impl: str, length: int, n_hashes: int | None = None
) -> dict | None:
    """The ok row for impl at length (n_hashes is ignored for un-hashed rows)."""
    for r in rows:
        if (
            r["impl"] == impl
            and r["length"] == length
            and r.get("status") == "ok"
            and (r.get("n_hashes") is None or r.get("n_hashes") == n_hashes)
        ):
            return r
    return None


def ratio(
    rows: Sequence[dict],
    num: str,
    den: str,
    length: int,
    n_hashes: int | None,
    key: str = "median_s",
) -> float | None:
    a, b = find_row(rows, num, length, n_hashes), find_row(rows, den, length, n_hashes)
    if a is None or b is None or not b.get(key):
        return None
    return a[key] / b[key]


def format_ratios(
    rows: Sequence[dict],
    num: str = "lsh",
    den: str = "full-fused",
    target: float | None = None,
) -> str:
    """``num`` / ``den`` median time for every (length, n_hashes) where both ran ok.

    With ``target``, each line also says whether the ratio is ``<= target``.
    """
    keys = sorted(
        {
            (r["length"], r["n_hashes"])
            for r in rows
            if r["impl"] == num and r.get("status") == "ok"
        },
        key=lambda k: (k[0], k[1] or 0),
    )
    lines = []
    for length, h in keys:
        value = ratio(rows, num, den, length, h)
        if value is not None:
            verdict = "" if target is None else f"  {'PASS' if value <= target else 'FAIL'}"
            lines.append(
                f"  length={length:<6} n_hashes={_cell(h):<3} {num}/{den} time = {value:.3f}"
                + verdict
            )
    if not lines:
        return ""
    bound = "" if target is None else f"; target <= {target:g}"
    return f"ratios ({num} / {den} median time, same run{bound}):\n" + "\n".join(lines)


def format_all_ratios(rows: Sequence[dict]) -> str:
    """Every :data:`RATIOS` section that has at least one line, blank-line separated."""
    sections = (format_ratios(rows, num, den, target) for num, den, target in RATIOS)
    return "\n\n".join(text for text in sections if text)


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c) for c in CSV_COLUMNS})


# --------------------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def _buckets(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or an even integer, got {text!r}"
        ) from None
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"n_buckets must be an even integer >= 2, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnbench-layer",
        description="Time one self-attention layer (forward + backward, batch 1), "
        "each case in a fresh subprocess.",
    )
    p.add_argument(
        "--impls",
        type=_name_list,
        default=["lsh", "full-fused"],
        help="comma-separated registry names (default: lsh,full-fused)",
    )
    p.add_argument("--lengths", type=_int_list, default=[1024, 4096, 16384])
    p.add_argument(
        "--n-hashes",
        type=_int_list,
        default=[1, 4],
        help="hash rounds; ignored by full attention, which runs once per length",
    )
    p.add_argument("--d-model", type=_positive_int, default=256)
    p.add_argument("--heads", type=_positive_int, default=4)
    p.add_argument("--chunk-len", type=_positive_int, default=64)
    p.add_argument(
        "--n-buckets",
        type=_buckets,
        default=None,
        metavar="auto|INT",
        help="buckets per hash round; auto = 2 * length // chunk_len",
    )
    p.add_argument("--repeats", type=_positive_int, default=5)
    p.add_argument("--warmup", type=int, default=1, choices=(1, 2))
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds per case before it is recorded as 'timeout'",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE|FILE.py",
        help="import builders from this module or file (repeatable)",
    )
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    if defaults:
        p.set_defaults(**defaults)
    return p


def parse_args(
    argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None
) -> argparse.Namespace:
    parser = build_parser(defaults)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout:g}")
    if args.d_model % args.heads:
        parser.error(f"--d-model {args.d_model} is not divisible by --heads {args.heads}")
    for ref in args.plugin:
        try:
            load_plugin(ref)
        except (ImportError, FileNotFoundError) as exc:
            parser.error(f"cannot load plugin {ref!r}: {exc}")
    unknown = [n for n in args.impls if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown impl(s) {unknown}; known: {sorted(REGISTRY)}")
    return args


def cases_from_args(args: argparse.Namespace) -> list[Case]:
    # Plugins travel as absolute paths so the worker finds them from any cwd.
    plugins = [str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin]
    return expand_cases(
        args.impls,
        args.lengths,
        args.n_hashes,
        args.n_buckets,
        d_model=args.d_model,
        heads=args.heads,
        chunk_len=args.chunk_len,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        seed=args.seed,
        plugins=plugins,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    rows = run_cases(cases_from_args(args), timeout=args.timeout, progress=not args.no_progress)
    print(format_table(rows))
    ratios = format_all_ratios(rows)
    if ratios:
        print()
        print(ratios)
    if args.csv:
        write_csv(rows, args.csv)
    # Failed cases are results (a row each), not a failure of the benchmark run.
    return 0


if __name__ == "__main__":
    # Run through the imported module, not ``__main__``, so that plugins registering into
    # ``attnbench.layer_bench.REGISTRY`` fill the registry the worker actually reads.
    from attnbench.layer_bench import main as _main

    sys.exit(_main())
