"""Same-run ratio contracts: what a suite claims, evaluated on one run's rows.

A suite states what it expects as ratios of two of its own cases, measured in the same run (so
the claim transfers across machines), e.g.::

    {"name": "LSH-1 fwd+bwd at 4096 <= 0.5x full", "metric": "time_median_s",
     "numerator": {"variant": "lsh", "n_hashes": 1, "length": 4096, "mode": "forward-backward"},
     "denominator": {"variant": "full-fused", "length": 4096, "mode": "forward-backward"},
     "max_ratio": 0.5}

``min_ratio`` may stand instead of or beside ``max_ratio``. A selector matches a row when every
key it names equals the row's case field (a key that is not a case field is looked up in the
case's ``options``). Each selector must match exactly one row and that row must be ``ok``;
otherwise the contract fails with a message saying what was missing, ambiguous or not ok (an
OOM'd numerator is a violation, its status named). Both values must be finite and positive: a
NaN, infinite, zero or negative numerator or denominator fails the contract, the message
naming the value (the row schema refuses such values; this is the second line of defence, as
an infinite denominator would pass any ``max_ratio``). The suite parser validates the syntax;
a contract read back from ``meta.json`` (which anyone can edit) is checked again here against
the same rules (a metric name, bounds positive finite numbers), and one that breaks them
fails, naming the field. ``attnbench check`` (:mod:`attnbench.contracts`) and the report's
contracts table both use this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from attnbench.runner.case import CaseIndex, distinct_labels
from attnbench.runs import latest_per_case, row_case, row_label, row_metrics


@dataclass(frozen=True)
class ContractResult:
    name: str
    passed: bool
    message: str                      # what was measured, or why it could not be
    metric: str | None = None
    ratio: float | None = None        # numerator / denominator when both were measured
    numerator_value: float | None = None
    denominator_value: float | None = None
    numerator_label: str | None = None
    denominator_label: str | None = None
    max_ratio: float | None = None
    min_ratio: float | None = None

    @property
    def bound(self) -> str:
        parts = []
        if self.min_ratio is not None:
            parts.append(f">= {_show(self.min_ratio)}")
        if self.max_ratio is not None:
            parts.append(f"<= {_show(self.max_ratio)}")
        return " and ".join(parts) or "(no bound)"


def _show(value: Any) -> str:
    return format(value, "g") if _is_number(value) else repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def within_bounds(ratio: float, min_ratio: float | None, max_ratio: float | None) -> bool:
    """Whether a measured ratio meets a contract's bounds (a bound of None holds nothing)."""
    return (max_ratio is None or ratio <= max_ratio) and (min_ratio is None or ratio >= min_ratio)


class _SelectionFailed(Exception):
    pass


def _describe(selector: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in selector.items()) + "}"


class _RowIndex:
    """One run's rows, selected through a :class:`CaseIndex` of their cases: selecting for C
    contracts costs about C + rows, not C x rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.cases = CaseIndex([row_case(row) for row in rows])

    def matching(self, selector: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows ``selector`` matches, in row order (see :class:`CaseIndex`)."""
        return [self.rows[i] for i in self.cases.matching(selector)]


def _select(rows: _RowIndex, selector: dict[str, Any], role: str) -> dict[str, Any]:
    if not isinstance(selector, dict) or not selector:
        raise _SelectionFailed(f"{role} selector is missing or empty")
    matches = rows.matching(selector)
    if not matches:
        raise _SelectionFailed(f"no case matches {role} {_describe(selector)}")
    if len(matches) > 1:
        shown = distinct_labels({str(i): row_case(r) for i, r in enumerate(matches[:6])})
        labels = ", ".join(shown.values())
        more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
        raise _SelectionFailed(f"{role} {_describe(selector)} is ambiguous: it matches "
                               f"{len(matches)} cases ({labels}{more}); name more fields")
    row = matches[0]
    if row.get("status") != "ok":
        error = row.get("error")
        detail = f": {str(error).strip().splitlines()[-1]}" if error else ""
        raise _SelectionFailed(f"{role} {row_label(row)} is "
                               f"{row.get('status')}{detail}")
    return row


def _metric_value(row: dict[str, Any], metric: str, role: str) -> float:
    value = row_metrics(row).get(metric)
    if value is None:
        raise _SelectionFailed(f"{role} {row_label(row)} has no {metric}")
    if not _positive_finite(value):
        raise _SelectionFailed(f"{role} {row_label(row)} has {metric} = {value!r}: not a "
                               "finite positive number, so no ratio of it can pass")
    return float(value)


def _contract_problem(contract: dict[str, Any]) -> str | None:
    """What breaks the suite parser's rules in a contract read back from meta.json."""
    metric = contract.get("metric")
    if metric is not None and not isinstance(metric, str):
        return f"metric {metric!r} must be a metric name (a string)"
    for bound in ("max_ratio", "min_ratio"):
        value = contract.get(bound)
        if value is not None and not _positive_finite(value):
            return f"{bound} {value!r} must be a positive finite number"
    return None


def evaluate_contract(rows: list[dict[str, Any]] | _RowIndex,
                      contract: dict[str, Any]) -> ContractResult:
    if not isinstance(rows, _RowIndex):
        rows = _RowIndex(rows)
    name = str(contract.get("name") or "unnamed contract")
    metric = contract.get("metric") or "time_median_s"
    max_ratio = contract.get("max_ratio")
    min_ratio = contract.get("min_ratio")
    common = {"name": name, "metric": metric, "max_ratio": max_ratio, "min_ratio": min_ratio}
    if max_ratio is None and min_ratio is None:
        return ContractResult(passed=False, message="neither max_ratio nor min_ratio given",
                              **common)
    problem = _contract_problem(contract)
    if problem:
        return ContractResult(passed=False, message=f"not a valid contract: {problem}",
                              **common)
    try:
        num_row = _select(rows, contract.get("numerator"), "numerator")
        den_row = _select(rows, contract.get("denominator"), "denominator")
        num_label, den_label = row_label(num_row), row_label(den_row)
        num = _metric_value(num_row, metric, "numerator")
        den = _metric_value(den_row, metric, "denominator")
    except _SelectionFailed as failed:
        return ContractResult(passed=False, message=str(failed), **common)
    ratio = num / den
    if not _positive_finite(ratio):  # over- or underflow of two extreme values
        return ContractResult(passed=False, message=(
            f"{metric}: {num_label} {num!r} / {den_label} {den!r} = {ratio!r}: not a finite "
            "positive ratio"), **common)
    passed = within_bounds(ratio, min_ratio, max_ratio)
    result = ContractResult(passed=passed, message="", ratio=ratio, numerator_value=num,
                            denominator_value=den, numerator_label=num_label,
                            denominator_label=den_label, **common)
    message = (f"{metric}: {num_label} {num:.4g} / {den_label} {den:.4g} = {ratio:.3g} "
               f"(want {result.bound})")
    return ContractResult(**{**result.__dict__, "message": message})


def evaluate_contracts(rows: Iterable[dict[str, Any]],
                       contracts: Iterable[dict[str, Any]]) -> list[ContractResult]:
    """Evaluate every contract on one run's rows (the last row of each case counts)."""
    index = _RowIndex(latest_per_case(list(rows)))
    return [evaluate_contract(index, c) for c in contracts]
