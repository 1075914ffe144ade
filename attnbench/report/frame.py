"""The tidy pandas table: one row per case and run, in :data:`attnbench.runs.LEADING_COLUMNS`
order (empty where a row has no value), built from the same records as ``results.csv``.

A model case that runs a registered attention (``Case.attention``) is shown as the variant
``model[attention]``, as its label says: every table and figure groups by variant, and a
Transformer running ``local`` is another line than the Transformer. ``results.csv`` keeps the
two fields apart."""

from __future__ import annotations

from attnbench.runs import Source, column_order, tidy_records


def tidy_frame(sources: list[Source]):
    """A pandas DataFrame of every row of every source."""
    import pandas as pd

    records = tidy_records(sources)
    frame = pd.DataFrame.from_records(records, columns=column_order(records))
    for column in ("length", "batch", "depth", "n_hashes", "n_buckets", "chunk_len"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "attention" in frame.columns:
        named = frame["attention"].map(lambda a: isinstance(a, str) and bool(a))
        frame.loc[named, "variant"] = (frame.loc[named, "variant"].astype(str) + "["
                                       + frame.loc[named, "attention"] + "]")
    return frame
