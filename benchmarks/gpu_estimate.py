"""How long benchmarks/gpu_check.sh should take on one H200, stage by stage, before it runs.

    python benchmarks/gpu_estimate.py [--cuda-tests N] [--cases]

An estimate, not a measurement: every case of the suites is costed from its FLOPs and bytes at
the rates and achieved fractions stated in ``Assumptions`` (printed with the estimate), plus
per-case and per-stage overheads (interpreter start, build and compile, warm-up calls) that are
guesses, stated as such. Nothing here needs a GPU, torch or JAX: the cases come from
``attnbench.runner.suite.load_suite`` and the FLOPs from attnbench's own work model
(``attnbench.measure.work.flops``, the ``flops`` of every row), split into the terms that run on
different engines; the split is checked to add up to that model (``model_flops``).

Per case: a step is a sum of terms, each ``max(executed FLOPs / (engine peak x fraction), bytes /
(HBM bandwidth x fraction))`` (a roofline per term, no overlap between terms), plus a launch
floor. Executed FLOPs differ from the work model's where the GPU does other work than the model
counts: FlashAttention-style backward recomputes the logits (2.5x the forward's matmul FLOPs
instead of 2x), a causal fused kernel skips the masked half, the hashing has no backward (the
buckets are constants), a reversible backward recomputes each layer's forward. A case costs its
overhead plus ``warmup + min_repeats`` steps (the harness stops at ``min_repeats`` once
IQR/median <= target_rel_iqr; GPU medians are assumed to settle that fast). A case whose
modelled peak memory passes the GPU's is counted as an out-of-memory row (overhead only), and
the longer lengths of its series as skipped (the runner skips them: no cost).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attnbench.measure import work  # noqa: E402
from attnbench.runner.case import TIMED_MODES, Case  # noqa: E402
from attnbench.runner.suite import load_suite  # noqa: E402
from attnbench.variants import get_variant  # noqa: E402

SUITES = ROOT / "suites"
GIB = 1024 ** 3


@dataclass(frozen=True)
class Assumptions:
    """Every number the estimate rests on. Rates: NVIDIA's H200 SXM datasheet."""

    tensor_tflops: float = 989.4   # BF16/FP16 dense tensor-core peak (1979 is with sparsity)
    fp32_tflops: float = 66.9      # FP32 on CUDA cores: float32 runs with TF32 off
    hbm_tb_s: float = 4.8          # HBM3e bandwidth
    hbm_gib: float = 139.0         # usable device memory (141 GB HBM3e)
    # Achieved fractions of peak (guesses: no GPU has run attnbench yet).
    matmul_fraction: float = 0.5   # projections, feed-forward, vocabulary head (bf16/fp16)
    flash_fraction: float = 0.35   # FlashAttention / cuDNN fwd+bwd at head size 64
    lsh_band_fraction: float = 0.25  # fused LSH band kernel (64-row tiles against 128 keys)
    fp32_fraction: float = 0.4     # float32 matmuls and kernels on CUDA cores
    hbm_fraction: float = 0.6      # memory-bound passes (sort, gathers, softmax, hashing buffer)
    # Launch floor of one timed step (kernel launches and host dispatch).
    layer_floor_ms: float = 0.3    # one layer forward + backward
    lsh_floor_ms: float = 0.5      # ... more small ops for LSH (hash, sort, gather, combine)
    model_floor_ms: float = 1.0    # per model layer in a training step, plus 2 ms per step
    # Per case, outside the timed steps: fork from the warm worker, build, first compile.
    torch_case_s: float = 3.0      # Triton compiles once; its cache serves later cases
    jax_case_s: float = 6.0        # XLA (and Pallas -> Triton) compile each new shape
    torch_model_s: float = 4.0     # + per layer below
    jax_model_s: float = 8.0
    model_layer_s: float = 0.5
    # Per stage and per command.
    worker_template_s: dict = field(default_factory=lambda: {"torch": 8.0, "jax": 10.0})
    env_s: float = 15.0            # attnbench env (probes both frameworks), nvidia-smi, CUDA
    export_s: float = 2.0          # results.csv after a run command
    kernel_check_start_s: dict = field(default_factory=lambda: {"torch": 8.0, "jax": 10.0})
    kernel_check_shape_s: dict = field(default_factory=lambda: {"torch": 8.0, "jax": 12.0})
    reference_shape_s: float = 3.0  # the NumPy float64 reference of one shape, per process
    pytest_start_s: float = 25.0   # imports torch and JAX, collects tests/torch_impl, jax_impl
    cuda_test_s: float = 1.5       # one CUDA test (most compile a kernel configuration)
    tests_timeout_s: float = 300.0  # gpu_check.sh's timeout on the CUDA tests
    report_s: float = 45.0         # attnbench report: HTML and figures
    summary_s: float = 3.0
    archive_s: float = 2.0

    def lines(self) -> list[str]:
        a = self
        return [
            f"rates (H200 SXM datasheet): BF16/FP16 dense tensor core {a.tensor_tflops:g} "
            f"TFLOP/s; FP32 CUDA cores {a.fp32_tflops:g} TFLOP/s (float32 runs with TF32 off); "
            f"HBM3e {a.hbm_tb_s:g} TB/s; {a.hbm_gib:g} GiB usable memory",
            f"achieved fractions of peak (guesses): matmuls {a.matmul_fraction:g}, "
            f"FlashAttention/cuDNN {a.flash_fraction:g}, fused LSH band {a.lsh_band_fraction:g}, "
            f"FP32 CUDA cores {a.fp32_fraction:g}, HBM {a.hbm_fraction:g}",
            "per term: max(executed FLOPs / (peak x fraction), bytes / (bandwidth x fraction)); "
            "terms add, no overlap",
            "executed vs model FLOPs (attnbench.measure.work): fused attention backward 2.5x "
            "its forward (recomputed logits), causal fused attention half, hashing forward "
            "only (buckets are constants), reversible backward + one forward per layer; "
            "bfloat16 hashing and logits run in float32 (CUDA cores)",
            "bytes: hashing writes a [B, H, L, n_buckets/2] float32 buffer per round and reads "
            "it twice; LSH sort/gather/unsort/combine ~ r*B*L*d*(4*itemsize + 8) per pass plus "
            "64 B per sorted key; JAX float32 full attention (XLA, no fused kernel) moves the "
            "L x L logits ~10 times per fwd+bwd",
            "peak memory (only to predict out-of-memory rows): the hashing buffer of one round; "
            "3 L x L float32 matrices for JAX float32 full attention; saved activations "
            "~ r*B*L*d*16 B per LSH layer (x depth unless reversible)",
            f"launch floor per timed step: layer {a.layer_floor_ms:g} ms, LSH layer "
            f"{a.lsh_floor_ms:g} ms, model {a.model_floor_ms:g} ms per layer + 2 ms",
            f"per case (fork, build, first compile; guesses): torch layer {a.torch_case_s:g} s, "
            f"JAX layer {a.jax_case_s:g} s, torch model {a.torch_model_s:g} s, JAX model "
            f"{a.jax_model_s:g} s, + {a.model_layer_s:g} s per model layer; then warmup + "
            "min_repeats steps (GPU medians assumed to settle at min_repeats)",
            f"per `attnbench run`: warm worker template per framework "
            f"{a.worker_template_s['torch']:g} s torch, {a.worker_template_s['jax']:g} s JAX; "
            f"results.csv {a.export_s:g} s",
            f"kernel check per framework: start {a.kernel_check_start_s['torch']:g} s torch / "
            f"{a.kernel_check_start_s['jax']:g} s JAX, per shape compile+run "
            f"{a.kernel_check_shape_s['torch']:g} s / {a.kernel_check_shape_s['jax']:g} s, "
            f"NumPy reference {a.reference_shape_s:g} s per shape",
            f"CUDA tests: pytest start {a.pytest_start_s:g} s + {a.cuda_test_s:g} s per test, "
            f"at most the script's {a.tests_timeout_s:g} s timeout",
            f"environment {a.env_s:g} s; report {a.report_s:g} s; summary {a.summary_s:g} s; "
            f"archive {a.archive_s:g} s each time",
            "not counted: the machine's own start and the copy of the archive off it",
        ]


H200 = Assumptions()


@dataclass(frozen=True)
class Term:
    """One piece of a step: what attnbench's work model counts, what the GPU executes, the
    bytes it moves, and the engine and fraction it runs at."""

    name: str
    model_flops: float
    exec_flops: float
    bytes: float
    engine: str      # "tensor" | "fp32"
    fraction: float  # of that engine's peak

    def seconds(self, hw: Assumptions) -> float:
        peak = hw.tensor_tflops if self.engine == "tensor" else hw.fp32_tflops
        compute = self.exec_flops / (peak * 1e12 * self.fraction) if self.exec_flops else 0.0
        memory = self.bytes / (hw.hbm_tb_s * 1e12 * hw.hbm_fraction)
        return max(compute, memory)


@dataclass(frozen=True)
class CaseEstimate:
    case: Case
    terms: tuple[Term, ...]
    step_s: float        # one timed step
    peak_bytes: float
    outcome: str         # "ok", "oom" (expected), "skipped" (after an oom in its series)
    overhead_s: float
    steps_s: float       # warm-up and timed steps
    seconds: float       # the whole case

    @property
    def model_flops(self) -> float:
        """What attnbench.measure.work.flops counts for the case (the rows' ``flops``)."""
        return sum(t.model_flops for t in self.terms)

    @property
    def exec_flops(self) -> float:
        return sum(t.exec_flops for t in self.terms)

    @property
    def bytes(self) -> float:
        return sum(t.bytes for t in self.terms)


def _engine(dtype: str, hw: Assumptions, fraction: float) -> tuple[str, float]:
    """16-bit matmuls run on tensor cores, float32 on CUDA cores (TF32 off)."""
    return ("fp32", hw.fp32_fraction) if dtype == "float32" else ("tensor", fraction)


def _lsh_terms(case: Case, d: int, factor: int, hw: Assumptions, prefix: str = "",
               recompute: bool = False) -> tuple[list[Term], float, float]:
    """The LSH attention terms of one layer (work.flops' three), the peak of its hashing
    buffer and its saved activations, in bytes."""
    b, n, h, r, c = case.batch, case.length, case.n_heads, case.n_hashes, case.chunk_len
    e = work.BYTES[case.dtype]
    half = case.n_buckets // 2
    window = 2  # as work.py: the chunk and the one before
    backward = factor > 1
    again = 1 if recompute else 0  # a reversible backward runs the forward once more
    engine, frac = _engine(case.dtype, hw, hw.matmul_fraction)
    proj = 6 * b * n * d * d
    terms = [Term(prefix + "projections", factor * proj, (factor + again) * proj,
                  (factor + again) * 6 * b * n * d * e, engine, frac)]
    hashing = 2 * b * n * d * half * r
    terms.append(Term(prefix + "hashing (float32)", factor * hashing, hashing,
                      3 * b * h * n * half * r * 4, "fp32", hw.fp32_fraction))
    attend = 4 * b * n * r * c * window * d
    fused = case.resolved_kernel in ("triton", "pallas")
    engine, frac = _engine(case.dtype, hw, hw.lsh_band_fraction if fused else hw.matmul_fraction)
    exec_attend = attend * ((1 + 2.5) if backward else 1) + again * attend
    band_bytes = r * b * n * d * (e * (1 + 2 * window) + 4) * (2.5 if backward else 1)
    if not fused:  # the portable core materialises blocks of float32 logits, ~4 passes each
        band_bytes += 4 * r * b * h * n * c * window * 4 * ((1 + 2.5) if backward else 1)
    terms.append(Term(prefix + f"band ({case.resolved_kernel})", factor * attend, exec_attend,
                      band_bytes, engine, frac))
    passes = (2 if backward else 1) + again
    glue = passes * (r * b * n * d * (4 * e + 8) + r * b * h * n * 64)
    terms.append(Term(prefix + "sort, gather, combine", 0.0, 0.0, glue, "fp32",
                      hw.fp32_fraction))
    hash_buffer = b * h * n * half * 4
    saved = r * b * n * d * 16
    return terms, hash_buffer, saved


def _full_terms(case: Case, d: int, factor: int, hw: Assumptions,
                framework: str) -> tuple[list[Term], float]:
    b, n, h = case.batch, case.length, case.n_heads
    e = work.BYTES[case.dtype]
    backward = factor > 1
    engine, frac = _engine(case.dtype, hw, hw.matmul_fraction)
    proj = 8 * b * n * d * d
    terms = [Term("projections", factor * proj, factor * proj, factor * 8 * b * n * d * e,
                  engine, frac)]
    attend = 4 * b * n * n * d
    executed = attend * ((1 + 2.5) if backward else 1)
    materialised = framework == "jax" and case.dtype == "float32"  # XLA: no fused kernel
    if case.causal and not materialised:
        executed /= 2
    engine, frac = _engine(case.dtype, hw, hw.flash_fraction)
    if materialised:
        moved = b * h * n * n * 4 * (10 if backward else 4)
        peak = 3 * b * h * n * n * 4
    else:
        moved = b * n * d * e * (4 + (8 if backward else 0))
        peak = 0.0
    terms.append(Term("attention (xla, L x L)" if materialised else "attention (fused)",
                      factor * attend, executed, moved, engine, frac))
    return terms, peak


def case_terms(case: Case, hw: Assumptions = H200) -> tuple[list[Term], float, float]:
    """The terms of one timed step of ``case``, its modelled peak memory in bytes and its
    launch floor in seconds."""
    if case.mode not in TIMED_MODES:
        raise ValueError(f"{case.label()}: mode {case.mode!r} is not timed; no estimate")
    variant = get_variant(case.variant)
    factor = work.BACKWARD_FACTOR[case.mode]
    d = case.d_model
    if variant.kind == "layer":
        if variant.attention == "lsh":
            terms, hash_buffer, saved = _lsh_terms(case, d, factor, hw)
            return terms, hash_buffer + saved, hw.lsh_floor_ms / 1e3
        if variant.attention == "full" and variant.impl == "fused":
            terms, peak = _full_terms(case, d, factor, hw, case.framework)
            return terms, peak, hw.layer_floor_ms / 1e3
        raise ValueError(f"{case.label()}: no estimate for variant {case.variant!r}")
    if variant.attention != "lsh":
        raise ValueError(f"{case.label()}: no estimate for model variant {case.variant!r}")
    b, n, e = case.batch, case.length, work.BYTES[case.dtype]
    layer, hash_buffer, saved = _lsh_terms(case, d, factor, hw, recompute=variant.reversible)
    ff = 4 * b * n * d * case.d_ff
    again = 1 if variant.reversible else 0
    engine, frac = _engine(case.dtype, hw, hw.matmul_fraction)
    layer.append(Term("feed-forward", factor * ff, (factor + again) * ff,
                      (factor + again) * b * n * (2 * d + case.d_ff) * e, engine, frac))
    terms = [dataclasses.replace(t, name=f"{case.depth} x {t.name}",
                                 model_flops=case.depth * t.model_flops,
                                 exec_flops=case.depth * t.exec_flops,
                                 bytes=case.depth * t.bytes) for t in layer]
    width = 2 * d if variant.reversible else d
    head = 2 * b * n * width * case.vocab_size
    terms.append(Term("vocabulary head", factor * head, factor * head,
                      factor * b * n * (width + case.vocab_size) * 4, engine, frac))
    stored = saved + b * n * case.d_ff * e
    peak = hash_buffer + stored * (1 if variant.reversible else case.depth)
    floor = (hw.model_floor_ms * case.depth + 2.0) / 1e3
    return terms, peak, floor


def case_overhead(case: Case, hw: Assumptions = H200) -> float:
    variant = get_variant(case.variant)
    if variant.kind == "layer":
        return hw.torch_case_s if case.framework == "torch" else hw.jax_case_s
    base = hw.torch_model_s if case.framework == "torch" else hw.jax_model_s
    return base + hw.model_layer_s * case.depth


def estimate_cases(cases, hw: Assumptions = H200) -> list[CaseEstimate]:
    """Each case's estimate, in the runner's order, with the out-of-memory skips it makes."""
    out = []
    oom_lengths: dict[str, int] = {}
    for case in cases:
        terms, peak, floor = case_terms(case, hw)
        step = floor + sum(t.seconds(hw) for t in terms)
        overhead = case_overhead(case, hw)
        key = case.series_key()
        if key in oom_lengths and case.length > oom_lengths[key]:
            outcome, overhead, steps = "skipped", 0.0, 0.0
        elif peak > hw.hbm_gib * GIB:
            outcome, steps = "oom", 0.0
            oom_lengths[key] = min(case.length, oom_lengths.get(key, case.length))
        else:
            outcome = "ok"
            steps = min((case.warmup + case.min_repeats) * step, case.timeout_s)
        out.append(CaseEstimate(case, tuple(terms), step, peak, outcome, overhead, steps,
                                overhead + steps))
    return out


@dataclass(frozen=True)
class Item:
    what: str
    seconds: float
    steps_s: float = 0.0   # of which warm-up and timed steps


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    items: tuple[Item, ...]
    cases: tuple[CaseEstimate, ...] = ()

    @property
    def seconds(self) -> float:
        return sum(i.seconds for i in self.items)


def _run_items(what: str, estimates: list[CaseEstimate], hw: Assumptions) -> list[Item]:
    if not estimates:
        return [Item(f"{what}: nothing left to run", hw.export_s)]
    frameworks = sorted({e.case.framework for e in estimates})
    counts = {}
    for e in estimates:
        counts[e.outcome] = counts.get(e.outcome, 0) + 1
    outcome = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    steps = sum(e.steps_s for e in estimates)
    return [
        Item(f"{what}: warm worker templates ({', '.join(frameworks)})",
             sum(hw.worker_template_s[f] for f in frameworks)),
        Item(f"{what}: {len(estimates)} cases ({outcome}): steps {steps:.0f} s, "
             f"per-case overhead {sum(e.overhead_s for e in estimates):.0f} s",
             sum(e.seconds for e in estimates), steps),
        Item(f"{what}: results.csv", hw.export_s),
    ]


def plan(check_suite, headline_suite, n_cuda_tests: int, hw: Assumptions = H200,
         kernel_shapes: int = 2, frameworks=("torch", "jax")) -> list[Stage]:
    """gpu_check.sh's stages in order: each a list of items with their estimated seconds."""
    headline_ids = {c.case_id for c in headline_suite.cases}
    everything = estimate_cases(check_suite.cases, hw)
    headline = [e for e in everything if e.case.case_id in headline_ids]
    rest = [e for e in everything if e.case.case_id not in headline_ids]
    archive = Item("archive DIR into DIR.tar.gz", hw.archive_s)
    env = Stage("env", "environment (attnbench env, nvidia-smi, a CUDA device?)",
                (Item("env.txt", hw.env_s), archive))
    checks = [Item(f"kernel check, {f} ({kernel_shapes} shapes, fused vs portable, fwd+bwd)",
                   hw.kernel_check_start_s[f] + kernel_shapes * (hw.kernel_check_shape_s[f]
                                                                 + hw.reference_shape_s))
              for f in frameworks]
    a = Stage("a", "headline: LSH-1/4 vs FlashAttention / cuDNN, bf16, fwd+bwd, 16K and 64K; "
              "kernel check; their summary",
              (*_run_items("attnbench run gpu-check --cases-of gpu-headline", headline, hw),
               Item("headline summary (timings)", hw.summary_s), archive, *checks,
               Item("headline summary (with the kernel checks)", hw.summary_s), archive),
              tuple(headline))
    tests = min(hw.pytest_start_s + n_cuda_tests * hw.cuda_test_s, hw.tests_timeout_s)
    b = Stage("b", "CUDA tests (pytest -k cuda tests/torch_impl tests/jax_impl)",
              (Item(f"{n_cuda_tests} CUDA tests (capped by the {hw.tests_timeout_s:.0f} s "
                    "timeout)", tests), archive))
    c = Stage("c", "the rest of gpu-check, its report and summary",
              (*_run_items("attnbench run gpu-check", rest, hw),
               Item("attnbench report", hw.report_s), Item("summary", hw.summary_s), archive),
              tuple(rest))
    return [env, a, b, c]


_CPU_PARAM = re.compile(r"\[(?:.*-)?cpu(?:-.*)?\]$")


def count_cuda_tests(python: str = sys.executable) -> tuple[int, str]:
    """How many tests ``pytest -k cuda tests/torch_impl tests/jax_impl`` selects on a GPU
    machine, counted here: each test with a ``cpu`` device parameter gets a ``cuda`` twin
    there, and those named for CUDA already are collected here too. (count, how)"""
    try:
        out = subprocess.run([python, "-m", "pytest", "-q", "--collect-only", "-p",
                              "no:cacheprovider", "tests/torch_impl", "tests/jax_impl"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"could not collect the tests ({exc}); counted as 0"
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    if not ids:
        return 0, f"pytest collected nothing (exit {out.returncode}); counted as 0"
    twins = sum(1 for i in ids if _CPU_PARAM.search(i))
    named = sum(1 for i in ids if "cuda" in i)
    return twins + named, (f"{twins} tests with a cpu device parameter (a cuda twin each on a "
                           f"GPU) + {named} collected here with -k cuda")


def _fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def render(stages: list[Stage], hw: Assumptions = H200, tests_how: str = "",
           cases: bool = False) -> str:
    lines = ["# gpu_check.sh: estimated time on one NVIDIA H200 (not measured)", ""]
    total = 0.0
    for stage in stages:
        total += stage.seconds
        lines.append(f"stage {stage.key}: {stage.title}: ~{_fmt(stage.seconds)} "
                     f"(cumulative ~{_fmt(total)})")
        for item in stage.items:
            lines.append(f"    {item.seconds:7.1f} s  {item.what}")
        if cases and stage.cases:
            lines.append("        case: seconds in all | outcome | one step | executed GFLOP | "
                         "GB moved | modelled peak")
            for e in stage.cases:
                lines.append(f"        {e.case.case_id}  {e.case.label():<58} {e.seconds:5.1f} s  "
                             f"{e.outcome:<7} {e.step_s * 1e3:8.2f} ms  "
                             f"{e.exec_flops / 1e9:9.1f} GFLOP  {e.bytes / 1e9:7.2f} GB  "
                             f"{e.peak_bytes / GIB:6.1f} GiB")
    lines += [f"total: ~{_fmt(total)} ({total:.0f} s)", ""]
    oom = [e for s in stages for e in s.cases if e.outcome != "ok"]
    if oom:
        lines.append("expected out-of-memory rows (modelled peak > usable memory) and the "
                     "lengths skipped after them:")
        lines += [f"    {e.case.label()}: {e.outcome} (modelled peak "
                  f"{e.peak_bytes / GIB:.0f} GiB)" for e in oom]
        lines.append("")
    lines.append("assumptions:")
    lines += [f"  - {line}" for line in hw.lines()]
    if tests_how:
        lines.append(f"  - CUDA tests counted on this machine: {tests_how}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=str(SUITES / "gpu-check.toml"))
    p.add_argument("--headline", default=str(SUITES / "gpu-headline.toml"))
    p.add_argument("--cuda-tests", type=int, metavar="N",
                   help="the number of CUDA tests (default: count them with pytest here)")
    p.add_argument("--cases", action="store_true", help="also list every case's estimate")
    args = p.parse_args(argv)
    how = "given on the command line"
    if args.cuda_tests is None:
        args.cuda_tests, how = count_cuda_tests()
    stages = plan(load_suite(args.suite), load_suite(args.headline), args.cuda_tests)
    print(render(stages, tests_how=how, cases=args.cases))
    return 0


def total_seconds(stages: list[Stage]) -> float:
    return sum(s.seconds for s in stages)


if __name__ == "__main__":
    sys.exit(main())
