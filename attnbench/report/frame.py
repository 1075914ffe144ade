"""The tidy table: one row per case and run, case fields then status then metrics; its CSV.

Rows from older or partial runs may lack any metric or case field: the frame always has the
leading columns below (empty where a row has no value), so the CSV's header is stable.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from attnbench.report.sources import Source, case_label, row_case, row_metrics
from attnbench.store import flatten

CASE_COLUMNS = ["variant", "framework", "mode", "device", "dtype", "length", "batch", "d_model",
                "n_heads", "d_ff", "depth", "vocab_size", "causal", "n_hashes", "n_buckets",
                "chunk_len", "ff_chunk_len", "seed", "options", "task", "train_attention"]
METRIC_COLUMNS = ["time_median_s", "time_iqr_s", "time_rel_iqr", "time_repeats", "warmup_s",
                  "compile_s", "tokens_per_s", "flop_per_s", "mem_peak_mb", "mem_analytic_mb",
                  "mem_method", "approx_out_rel_err", "approx_grad_rel_err", "approx_recall",
                  "task_accuracy"]
LEADING_COLUMNS = (["run_id", "case_id", "label", *CASE_COLUMNS, "status", "error", "wall_s",
                    *METRIC_COLUMNS])


def tidy_records(sources: list[Source]) -> list[dict[str, Any]]:
    records = []
    for source in sources:
        for row in source.rows:
            case = row_case(row)
            record = flatten({**row, "case": case, "metrics": row_metrics(row)})
            record["run_id"] = record.get("run_id") or source.run_id
            record["label"] = case_label(case)
            options = case.get("options") if isinstance(case.get("options"), dict) else {}
            record["task"] = options.get("task") or row_metrics(row).get("task_name")
            # The runner records the attention a task trained with (from the variant and
            # n_hashes) as a metric; older rows may carry it as an option.
            record["train_attention"] = (options.get("train_attention")
                                         or row_metrics(row).get("task_train_attention"))
            records.append(record)
    return records


def column_order(records: list[dict[str, Any]]) -> list[str]:
    columns = list(LEADING_COLUMNS)
    for record in records:
        columns.extend(k for k in record if k not in columns)
    return columns


def tidy_frame(sources: list[Source]):
    """A pandas DataFrame of every row of every source, in :data:`LEADING_COLUMNS` order."""
    import pandas as pd

    records = tidy_records(sources)
    frame = pd.DataFrame.from_records(records, columns=column_order(records))
    for column in ("length", "batch", "depth", "n_hashes", "n_buckets", "chunk_len"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value


def write_results_csv(sources: list[Source], path: str | os.PathLike) -> int:
    """results.csv: one row per case and run; lists and dicts as JSON text. Returns the count."""
    records = tidy_records(sources)
    columns = column_order(records)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: _cell(record.get(k)) for k in columns})
    return len(records)
