"""The JAX step the harness times: any number of calls, each with its own key."""

from attnbench.jax_impl.bench import make_step
from attnbench.runner.case import Case
from attnbench.variants import get_variant


def test_step_takes_more_calls_than_the_case_budgets():
    """Keys come from the call number, not from a pre-split list of warmup + max_repeats (a
    profiler pass or a retry calls the step again)."""
    case = Case(variant="lsh", framework="jax", mode="forward-backward", length=64, d_model=16,
                n_heads=2, n_hashes=2, n_buckets=4, chunk_len=16, kernel="auto", warmup=1,
                max_repeats=2)
    step = make_step(case, get_variant("lsh"))
    for _ in range(case.warmup + case.max_repeats + 3):
        step.run()
    assert step.info["kernel"] == "portable"
