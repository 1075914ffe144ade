"""``history confirm``'s verdict from the rows its re-runs wrote: pooled per commit and judged
with ``compare``; an inconclusive verdict says compare's reason (which side was unstable and
why), not only the word."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from attnbench.history.confirm import CONFIRMED, INCONCLUSIVE, judge, pooled
from attnbench.history.model import LOWER, REGRESSION, Series, Step

GOLDEN = Path(__file__).parents[1] / "report" / "data" / "torch-cpu" / "results.jsonl"


def _row(slower: float = 1.0, unstable: list[str] | None = None) -> dict:
    """A golden run's first row, its times scaled by ``slower`` (a re-run of another commit)."""
    row = copy.deepcopy(json.loads(GOLDEN.read_text().splitlines()[0]))
    m = row["metrics"]
    m["time_samples_s"] = [s * slower for s in m["time_samples_s"]]
    m["time_median_s"] *= slower
    if unstable:
        m.update(unstable=True, unstable_reasons=unstable)
    return row


def _step_and_series(row: dict) -> tuple[Step, Series]:
    series = Series(id=1, machine_id=1, case_id=row["case_id"], label="full-naive/torch",
                    metric="time_median_s", direction=LOWER)
    step = Step(series_id=1, before_sha="a" * 40, after_sha="b" * 40, before_value=1.0,
                after_value=3.0, ratio=3.0, kind=REGRESSION, id=1)
    return step, series


def test_a_step_measured_again_on_a_quiet_machine_is_confirmed():
    step, series = _step_and_series(_row())
    before = pooled([_row(), _row()], series.case_id)
    after = pooled([_row(3.0), _row(3.0)], series.case_id)
    assert len(after["metrics"]["time_samples_s"]) == 2 * len(_row()["metrics"]["time_samples_s"])
    verdict, detail = judge(step, series, before, after, threshold=0.05)
    assert verdict == CONFIRMED, detail
    assert 2.9 < detail["time_ratio"] < 3.1 and "why" not in detail


def test_an_inconclusive_verdict_says_which_side_was_unstable_and_why():
    step, series = _step_and_series(_row())
    busy = "machine busy: other processes used 40% of the case's CPUs [0] (over 10%)"
    before = pooled([_row(), _row()], series.case_id)
    after = pooled([_row(3.0), _row(3.0, unstable=[busy])], series.case_id)
    verdict, detail = judge(step, series, before, after, threshold=0.05)
    assert verdict == INCONCLUSIVE, detail
    assert detail["why"].startswith("re-measured: inconclusive (")
    assert "head marked unstable" in detail["why"] and busy in detail["why"], detail["why"]
