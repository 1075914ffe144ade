"""pytest-benchmark for attention variants: the ``attn_benchmark`` fixture.

``attn_benchmark`` wraps pytest-benchmark's ``benchmark`` fixture. Given a
:class:`~attnbench.runner.case.Case`, or keyword settings that build one exactly as a suite
would (same defaults, same validation), it builds the step with the framework's
``make_step`` (untimed; JAX lowers and compiles ahead of time), then times fixed rounds with
``benchmark.pedantic``. Each round's ``run`` synchronises the device before it returns (CUDA
synchronize for torch, ``jax.block_until_ready`` on the whole output for JAX), and the
per-round ``setup`` synchronises once more so nothing queued outside ``run`` leaks into a
round. Compilation and warm-up rounds are never timed.

``benchmark.extra_info`` then carries what pytest-benchmark cannot measure: peak memory over
the timed rounds (the step's memory meter: baseline before the warm-up, peak reset after it),
``lower_s`` / ``compile_s`` for JAX, ``tokens_per_s``, ``flops`` with its ``flop_formula``,
the analytic memory estimate, the whole case (``case``, and its fields flat so
``attnbench report`` and ``attnbench compare`` read them) and accuracy a test attaches.

Registered through the ``pytest11`` entry point; ``import attnbench.pytest_plugin`` imports
neither torch nor jax (they load inside the fixture, for the framework a case names).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

DEFAULT_ROUNDS = 5
DEFAULT_WARMUP_ROUNDS = 1
FRAMEWORK_EXTRAS = {"torch": "torch", "jax": "jax"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnbench")
    group.addoption("--attnbench-device", default="cpu", metavar="DEVICE",
                    help="device for attn_benchmark cases built from keywords that name none: "
                         "cpu (default), cuda or cuda:N (no CPU fallback)")


def pytest_configure(config: pytest.Config) -> None:
    # JAX's GPU pool would otherwise hide the peak; it must be set before jax is imported.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def build_case(**settings: Any):
    """The one :class:`Case` that ``settings`` describe, with a suite's defaults and checks.

    ``settings`` are the keys of a suite's ``[[sweep]]`` table, one value each (``variant``,
    ``framework``, ``mode`` and ``length`` are required); a bad value raises ``ValueError``
    naming the key and the rule.
    """
    from attnbench.runner.suite import parse_suite

    cases = parse_suite({"name": "pytest-benchmark", "sweep": [settings]},
                        where="attn_benchmark").cases
    if len(cases) != 1:
        raise ValueError(f"attn_benchmark: settings expand to {len(cases)} cases; give one "
                         f"value per key (parametrise the test for a sweep)")
    return cases[0]


def _require_framework(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed: pip install 'attnbench[{FRAMEWORK_EXTRAS[name]}]'")


def _make_step(case, variant):
    if case.framework == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # see pytest_configure
        from attnbench.jax_impl.bench import make_step
    else:
        from attnbench.torch_impl.bench import make_step
    return make_step(case, variant)


def _device_sync(case):
    """A barrier for the case's device; ``run`` already waits for its own work."""
    if case.framework == "torch" and case.device.startswith("cuda"):
        import torch

        return lambda: torch.cuda.synchronize(case.device)
    # JAX: run() blocks on its whole output and nothing else is dispatched between rounds.
    return lambda: None


def _flat_case_fields(case) -> dict[str, Any]:
    """What the case measures, as top-level extra_info keys: the report's reader takes case
    fields from there (how it was measured stays in ``case`` only)."""
    from attnbench.runner.case import HOW_FIELDS

    return {k: v for k, v in case.to_dict().items() if k not in HOW_FIELDS and k != "options"}


class AttentionBenchmark:
    """What ``attn_benchmark`` gives a test: call it once with a case; attach accuracy after."""

    def __init__(self, benchmark, default_device: str) -> None:
        self.benchmark = benchmark
        self.default_device = default_device
        self.case = None
        self.variant = None
        self._torch_threads = None

    @property
    def extra_info(self) -> dict[str, Any]:
        return self.benchmark.extra_info

    def __call__(self, case=None, /, *, rounds: int | None = None,
                 warmup_rounds: int | None = None, **settings: Any) -> dict[str, Any]:
        """Benchmark ``case`` (or the case ``settings`` build) and return its extra_info.

        Rounds and warm-up rounds default to the case's ``max_repeats`` and ``warmup``
        (:data:`DEFAULT_ROUNDS` and :data:`DEFAULT_WARMUP_ROUNDS` for keyword settings); the
        recorded case says what was run (``min_repeats == max_repeats == rounds``).
        """
        from attnbench.measure import machine, work
        from attnbench.variants import case_frameworks, get_variant

        if self.case is not None:
            raise RuntimeError("attn_benchmark can be called once per test (as benchmark)")
        if case is None:
            settings.setdefault("device", self.default_device)
            settings.setdefault("warmup", DEFAULT_WARMUP_ROUNDS)
            settings.setdefault("min_repeats", rounds or DEFAULT_ROUNDS)
            settings.setdefault("max_repeats", rounds or DEFAULT_ROUNDS)
            case = build_case(**settings)
        elif settings:
            raise TypeError(f"attn_benchmark: give a Case or settings, not both "
                            f"({', '.join(settings)})")
        rounds = case.max_repeats if rounds is None else rounds
        warmup_rounds = case.warmup if warmup_rounds is None else warmup_rounds
        case = dataclasses.replace(case, warmup=warmup_rounds, min_repeats=rounds,
                                   max_repeats=rounds)
        variant = get_variant(case.variant)
        if case.framework not in case_frameworks(variant, case):
            raise ValueError(f"{case.label()}: no {case.framework} implementation (it has "
                             f"{', '.join(case_frameworks(variant, case))})")
        self.case, self.variant = case, variant

        bench = self.benchmark
        if bench.group is None:  # a @pytest.mark.benchmark(group=...) wins
            bench.group = f"{case.framework} {case.mode} L={case.length}"
        bench.extra_info.update(_flat_case_fields(case))
        bench.extra_info.update(case=case.to_dict(), case_id=case.case_id, label=case.label())

        _require_framework(case.framework)
        if case.framework == "torch":
            import torch

            self._torch_threads = torch.get_num_threads()  # make_step may set it process-wide
        t0 = time.perf_counter()
        step = _make_step(case, variant)
        setup_s = time.perf_counter() - t0
        sync = _device_sync(case)
        calls = {"setup": 0, "warmup_end": None, "machine": None}
        warmup_start = time.perf_counter()
        cpus = machine.worker_cpus()

        def before_round():
            sync()
            if calls["setup"] == warmup_rounds:  # the first timed round is next
                calls["warmup_end"] = time.perf_counter()
                step.memory.after_warmup()
                calls["machine"] = machine.snapshot(cpus)
            calls["setup"] += 1

        step.memory.start()
        bench.pedantic(step.run, setup=before_round, rounds=rounds, warmup_rounds=warmup_rounds)
        bench.extra_info.update(step.info)
        bench.extra_info["setup_s"] = setup_s
        if bench.disabled:  # --benchmark-disable: run once as a test, nothing measured
            return bench.extra_info
        bench.extra_info.update(step.memory.result())
        bench.extra_info["warmup_s"] = calls["warmup_end"] - warmup_start
        bench.extra_info["warmup_rounds"] = warmup_rounds
        bench.extra_info.update(work.work_metrics(case, variant, bench.stats.stats.median))
        # what the machine did over the timed rounds, and the unstable mark, as the worker does
        stats = bench.stats.stats
        noise = {"time_rel_iqr": stats.iqr / stats.median if stats.median > 0 else None,
                 "time_repeats": stats.rounds,
                 **machine.machine_metrics(calls["machine"], machine.snapshot(cpus), cpus)}
        reasons = machine.unstable_reasons(noise, case.target_rel_iqr)
        bench.extra_info.update({k: v for k, v in noise.items() if k.startswith(
            ("machine_", "worker_", "cpus"))}, unstable=bool(reasons), unstable_reasons=reasons)
        bench.extra_info["status"] = "ok"
        return bench.extra_info

    def attach_accuracy(self, metrics: Mapping[str, float | int | None]) -> None:
        """Record accuracy numbers (e.g. ``approx_out_rel_err``) beside time and memory."""
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"accuracy metric name {name!r}: must be a non-empty string")
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise TypeError(f"accuracy metric {name}={value!r}: must be a number or None")
            self.benchmark.extra_info[name] = None if value is None or (
                isinstance(value, float) and math.isnan(value)) else value

    def attach_approximation(self, **options: Any) -> dict[str, Any]:
        """Measure (untimed) how well the benchmarked LSH layer approximates exact shared-QK
        attention, as an ``approx`` case would, and attach it. ``options``: ``inputs``,
        ``n_clusters``, ``n_seeds`` (see :mod:`attnbench.runner.accuracy_modes`)."""
        from attnbench.runner import accuracy_modes

        if self.case is None:
            raise RuntimeError("attach_approximation: benchmark a case first")
        case = dataclasses.replace(self.case, mode="approx", options=options)
        metrics = accuracy_modes.measure_approx(case, self.variant)
        self.attach_accuracy(metrics)
        return metrics

    def _restore(self) -> None:
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)


@pytest.fixture
def attn_benchmark(benchmark, request) -> Iterator[AttentionBenchmark]:
    """Benchmark one attention case with device sync, memory, work and accuracy recorded."""
    # The option exists once the plugin is registered (entry point or -p), not when a conftest
    # only imports this fixture.
    device = request.config.getoption("attnbench_device", default="cpu")
    meter = AttentionBenchmark(benchmark, device)
    yield meter
    meter._restore()
