"""Layer benchmark: one self-attention layer, forward + backward, batch 1.

Each case (impl, length, n_hashes) runs in a fresh subprocess
(``python -m attnbench.layer_bench --worker <json>``) so that its memory reading starts
clean and an out-of-memory kill, a crash or a hang becomes a table row with status
``oom`` / ``error`` / ``timeout`` instead of ending the run.

Usage::

    python -m attnbench.layer_bench --impls lsh,full-fused --lengths 1024,4096 --n-hashes 1,4

Registry
    ``register(name, hashed=True)(make)`` adds an implementation. ``make(length, n_hashes,
    args)`` returns ``(module, x)`` or ``(module, x, info)``: ``x`` is a float32
    ``[1, length, d_model]`` input with ``requires_grad=True``, ``args`` is the :class:`Case`
    (``d_model``, ``heads``, ``chunk_len``, ``n_buckets``, ``device``...), and ``info`` is an
    optional dict merged into the result row (e.g. ``{"n_buckets": 256}`` when an
    implementation picks its own bucket count). ``hashed=False`` marks implementations
    that ignore ``n_hashes``; they run once per length.

Plugins
    Builders defined outside this module reach the worker subprocess through plugins: a
    dotted module name or a path to a ``.py`` file, given with ``--plugin`` (repeatable)
    and carried to the worker in the case JSON (``"plugins": [...]``). The worker imports
    each plugin before looking up the implementation, so the plugin must register its
    builders at import time and keep its own ``main()`` behind ``if __name__ ==
    "__main__"``. ``benchmarks/lsh_layer_vs_peers.py`` is an example.

Measurements
    Time: ``warmup`` untimed steps, then ``repeats`` steps timed with
    ``time.perf_counter`` (CUDA is synchronized around each step); median and
    interquartile range in seconds.
    Memory (CPU): peak resident set during the timed steps minus the resident set just
    before the first warm-up step. The peak is ``VmHWM`` from ``/proc/self/status`` after
    resetting it (writing ``5`` to ``/proc/self/clear_refs``) once the warm-up is done.
    If the reset fails the row says ``rss_reset: false`` and the peak is ``ru_maxrss``,
    which can also include peaks from before the timed steps (import, build, warm-up).
    Memory (CUDA): ``max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus
    ``memory_allocated()`` before the first warm-up step.

torch is imported only inside functions, so the parent process (and ``--help``) stays
light and never touches the accelerator.
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


@dataclass(frozen=True)
class Impl:
    name: str
    make: Callable[..., tuple]
    hashed: bool


REGISTRY: dict[str, Impl] = {}


def register(name: str, hashed: bool = True) -> Callable[[Callable], Callable]:
    """Decorator adding ``make(length, n_hashes, args)`` to the registry under ``name``."""

    def deco(make: Callable) -> Callable:
        REGISTRY[name] = Impl(name=name, make=make, hashed=hashed)
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


@register("lsh")
def _make_lsh(length: int, n_hashes: int, args: Case):
    import torch

    from attnbench.spec import AttentionSpec
    from attnbench.torch_impl.lsh_attention import LSHSelfAttention

    spec = AttentionSpec(
        kind="lsh",
        n_heads=args.heads,
        causal=False,
        n_hashes=n_hashes,
        n_buckets=args.n_buckets,
        chunk_len=args.chunk_len,
    )
    layer = LSHSelfAttention(
        d_model=args.d_model, spec=spec, device=args.device, dtype=torch.float32
    )
    return layer, make_input(length, args)


def _make_full(impl: str):
    def make(length: int, n_hashes: int, args: Case):
        import torch

        from attnbench.spec import AttentionSpec
        from attnbench.torch_impl.full_attention import FullSelfAttention

        spec = AttentionSpec(kind="full", n_heads=args.heads, causal=False, impl=impl)
        layer = FullSelfAttention(
            d_model=args.d_model, spec=spec, device=args.device, dtype=torch.float32
        )
        return layer, make_input(length, args)

    return make


register("full-fused", hashed=False)(_make_full("fused"))
register("full-naive", hashed=False)(_make_full("naive"))


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


def measure(case: Case) -> dict:
    """Build and time one case in this process. Raises on failure."""
    impl = get_impl(case.impl)  # before importing torch: a bad name fails fast
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
        out = module(x)
        out.sum().backward()

    if cuda:
        torch.cuda.synchronize()
        base_mb = torch.cuda.memory_allocated() / 2**20
    else:
        base_mb = _current_rss_mb()
    for _ in range(case.warmup):
        step()

    rss_reset = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        rss_reset = _reset_hwm()

    times = []
    for _ in range(case.repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)

    if cuda:
        mem_mb = torch.cuda.max_memory_allocated() / 2**20 - base_mb
        mem_method = "cuda_max_allocated"
    elif rss_reset:
        mem_mb = _proc_status_kb("VmHWM") / 1024 - base_mb
        mem_method = "vmhwm"
    else:
        import resource

        mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mb
        mem_method = "ru_maxrss (not reset: may include pre-step peaks)"

    row = {
        "status": "ok",
        "median_s": statistics.median(times),
        "iqr_s": _iqr(times),
        "mem_MB": mem_mb,
        "mem_base_MB": base_mb,  # resident (CPU) or allocated (CUDA) before the warm-up
        "times_s": times,
        "mem_method": mem_method,
        "rss_reset": rss_reset,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    row.update(info)
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

TABLE_COLUMNS = ("impl", "length", "n_hashes", "n_buckets", "status", "median_s", "iqr_s", "mem_MB")
CSV_COLUMNS = TABLE_COLUMNS + (
    "mem_base_MB",
    "threads",
    "device",
    "repeats",
    "mem_method",
    "rss_reset",
    "torch",
    "error",
)


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


def format_ratios(rows: Sequence[dict], num: str = "lsh", den: str = "full-fused") -> str:
    """``num`` / ``den`` median time for every (length, n_hashes) where both ran ok."""
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
            lines.append(
                f"  length={length:<6} n_hashes={_cell(h):<3} {num}/{den} time = {value:.3f}"
            )
    if not lines:
        return ""
    return f"ratios ({num} / {den} median time, same run):\n" + "\n".join(lines)


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
    ratios = format_ratios(rows)
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
