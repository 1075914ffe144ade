"""Numbers derived from the tidy frame: series, largest length that fits, speed-ups, exponents.

A *series* is every case that differs only in ``length`` and ``batch`` (and ``n_buckets``,
which suites derive from the length), within one run: the points of one line in a
time-vs-length figure, the series an OOM cuts short.
"""

from __future__ import annotations

import math

from attnbench.runner.case import TIMED_MODES

ATTENTION_LAYERS = ("full-naive", "full-fused", "full-shared-qk", "lsh")
# the baseline each family's speed-up is taken over, first present wins
LAYER_BASELINES = ("full-fused", "full-naive")
MODEL_BASELINES = ("transformer",)
SERIES_FIELDS = ("run_id", "variant", "framework", "mode", "device", "dtype", "d_model",
                 "n_heads", "d_ff", "depth", "vocab_size", "causal", "n_hashes", "chunk_len",
                 "ff_chunk_len", "seed", "task", "train_attention")
# fields shown in a series' name only where they tell two series apart
DISTINGUISHING_FIELDS = ("chunk_len", "d_model", "n_heads", "d_ff", "depth", "causal", "dtype",
                         "ff_chunk_len", "seed")


def _present(frame, columns):
    return [c for c in columns if c in frame.columns]


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def with_series(frame):
    """Adds ``series_key``, ``series`` (variant and hashes, plus what else tells series apart)
    and ``setup`` (framework/device, and the run when several runs are shown)."""
    frame = frame.copy()
    fields = _present(frame, SERIES_FIELDS)
    frame["series_key"] = frame[fields].map(str).agg("|".join, axis=1) if len(frame) else ""

    def name(row):
        text = str(row.get("variant"))
        if _text(row.get("n_hashes")) != "-":
            text += f" h={_text(row.get('n_hashes'))}"
        return text

    frame["series"] = frame.apply(name, axis=1) if len(frame) else ""
    for field in _present(frame, DISTINGUISHING_FIELDS):
        varying = frame.groupby("series")[field].transform(lambda s: s.map(str).nunique() > 1) \
            if len(frame) else []
        if len(frame) and varying.any():
            frame.loc[varying, "series"] = (frame.loc[varying, "series"] + f" {field}="
                                            + frame.loc[varying, field].map(_text))
    several_runs = frame["run_id"].nunique() > 1 if len(frame) else False
    several_devices = frame["device"].nunique() > 1 if len(frame) else False

    def setup(row):
        text = str(row.get("framework"))
        device = _text(row.get("device"))
        if device != "-" and (several_devices or device != "cpu"):
            text += f"/{device}"
        if several_runs:
            text += f" [{row.get('run_id')}]"
        return text

    frame["setup"] = frame.apply(setup, axis=1) if len(frame) else ""
    return frame


def length_series(frame, modes=TIMED_MODES):
    """Rows of timed modes whose series has at least two lengths (ok or not)."""
    if not len(frame):
        return frame
    frame = with_series(frame[frame["mode"].isin(modes) & frame["length"].notna()])
    if not len(frame):
        return frame
    n_lengths = frame.groupby("series_key")["length"].transform("nunique")
    return frame[n_lengths >= 2]


def largest_fit(frame):
    """Per series: the largest length measured ok, and the first length that was not."""
    import pandas as pd

    frame = length_series(frame)
    records = []
    if not len(frame):
        return pd.DataFrame(columns=["run_id", "variant", "framework", "mode", "series", "setup",
                                     "largest ok length", "first failure", "failure status"])
    for _, group in frame.groupby("series_key", sort=False):
        first = group.iloc[0]
        ok = group[group["status"] == "ok"]
        largest = ok["length"].max() if len(ok) else None
        failed = group[(group["status"] != "ok")
                       & ((largest is None) | (group["length"] > (largest or 0)))]
        failed = failed.sort_values("length")
        records.append({
            "run_id": first["run_id"], "variant": first["variant"],
            "framework": first["framework"], "mode": first["mode"], "series": first["series"],
            "setup": first["setup"],
            "largest ok length": None if largest is None else int(largest),
            "first failure": None if not len(failed) else int(failed["length"].iloc[0]),
            "failure status": None if not len(failed) else failed["status"].iloc[0]})
    return pd.DataFrame.from_records(records)


def speedups(frame, metric="time_median_s"):
    """baseline / variant for every ok timed row that has a baseline at the same point.

    Layers are compared with full-fused (else full-naive) attention, models with the
    transformer, in the same run, framework, device, dtype, mode, length and widths."""
    import pandas as pd

    columns = ["run_id", "mode", "series", "setup", "length", "baseline", "speedup"]
    if not len(frame) or metric not in frame.columns:
        return pd.DataFrame(columns=columns)
    ok = with_series(frame[(frame["status"] == "ok") & frame["mode"].isin(TIMED_MODES)
                           & frame[metric].notna()])
    if not len(ok):
        return pd.DataFrame(columns=columns)
    point = _present(ok, ("run_id", "framework", "device", "dtype", "mode", "length", "batch",
                          "d_model", "n_heads", "causal"))
    ok = ok.assign(family=ok["variant"].isin(ATTENTION_LAYERS).map({True: "layer",
                                                                     False: "model"}))
    keys = [*point, "family"] + (["depth"] if "depth" in ok.columns else [])
    records = []
    for _, group in ok.groupby(keys, dropna=False, sort=False):
        names = LAYER_BASELINES if group["family"].iloc[0] == "layer" else MODEL_BASELINES
        base = next((group[group["variant"] == n] for n in names
                     if (group["variant"] == n).sum() == 1), None)
        if base is None:
            continue
        base_value = float(base[metric].iloc[0])
        for _, row in group.iterrows():
            if row["variant"] == base["variant"].iloc[0] or not row[metric]:
                continue
            records.append({"run_id": row["run_id"], "mode": row["mode"],
                            "series": row["series"], "setup": row["setup"],
                            "length": row["length"], "baseline": base["variant"].iloc[0],
                            "speedup": base_value / float(row[metric])})
    return pd.DataFrame.from_records(records, columns=columns)


def scaling_exponents(frame, metrics=("time_median_s", "mem_peak_mb"), min_points=3):
    """Least-squares slope of log(metric) on log(length) per series: ~1 linear, ~2 quadratic."""
    import numpy as np
    import pandas as pd

    records = []
    frame = length_series(frame)
    if len(frame):
        frame = frame[frame["status"] == "ok"]
    for metric in metrics:
        if not len(frame) or metric not in frame.columns:
            continue
        for _, group in frame.groupby("series_key", sort=False):
            points = group[[metric, "length"]].dropna()
            points = points[(points[metric] > 0) & (points["length"] > 0)]
            if points["length"].nunique() < min_points:
                continue
            x = np.log(points["length"].astype(float).to_numpy())
            y = np.log(points[metric].astype(float).to_numpy())
            slope, intercept = np.polyfit(x, y, 1)
            residual = y - (slope * x + intercept)
            records.append({"metric": metric, "mode": group["mode"].iloc[0],
                            "series": group["series"].iloc[0], "setup": group["setup"].iloc[0],
                            "exponent": float(slope),
                            "lengths": f"{int(points['length'].min())}-"
                                       f"{int(points['length'].max())}",
                            "points": int(len(points)),
                            "rms residual": float(np.sqrt(np.mean(residual**2)))})
    return pd.DataFrame.from_records(records, columns=["metric", "mode", "series", "setup",
                                                       "exponent", "lengths", "points",
                                                       "rms residual"])
