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
    and ``setup`` (framework/device, and the run when several runs are shown). Column-wise,
    not row by row: a report of 20,000 cases builds its series several times."""
    frame = frame.copy()
    if not len(frame):
        return frame.assign(series_key="", series="", setup="")
    fields = _present(frame, SERIES_FIELDS)
    key = frame[fields[0]].map(str)
    for name in fields[1:]:
        key = key + "|" + frame[name].map(str)
    frame["series_key"] = key
    variant = frame["variant"].map(str)
    hashes = frame["n_hashes"].map(_text) if "n_hashes" in frame.columns else "-"
    frame["series"] = variant.where(hashes == "-", variant + " h=" + hashes)
    for name in _present(frame, DISTINGUISHING_FIELDS):
        varying = frame[name].map(str).groupby(frame["series"]).transform("nunique") > 1
        if varying.any():
            frame.loc[varying, "series"] = (frame.loc[varying, "series"] + f" {name}="
                                            + frame.loc[varying, name].map(_text))
    setup = frame["framework"].map(str)
    device = frame["device"].map(_text)
    shown = (device != "-") & ((device.nunique() > 1) | (device != "cpu"))
    setup = setup.where(~shown, setup + "/" + device)
    if frame["run_id"].nunique() > 1:
        setup = setup + " [" + frame["run_id"].map(str) + "]"
    frame["setup"] = setup
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
    columns = ["run_id", "variant", "framework", "mode", "series", "setup",
               "largest ok length", "first failure", "failure status"]
    if not len(frame):
        return pd.DataFrame(columns=columns)
    largest = frame.loc[frame["status"] == "ok"].groupby("series_key")["length"].max()
    beyond = frame["series_key"].map(largest)
    failed = frame[(frame["status"] != "ok") & (beyond.isna() | (frame["length"] > beyond))]
    first_failed = failed.sort_values("length", kind="stable").drop_duplicates("series_key") \
        .set_index("series_key")
    records = []
    for row in frame.drop_duplicates("series_key").itertuples(index=False):
        key = row.series_key
        top = largest.get(key)
        failure = first_failed.loc[key] if key in first_failed.index else None
        records.append({
            "run_id": row.run_id, "variant": row.variant, "framework": row.framework,
            "mode": row.mode, "series": row.series, "setup": row.setup,
            "largest ok length": None if top is None else int(top),
            "first failure": None if failure is None else int(failure["length"]),
            "failure status": None if failure is None else failure["status"]})
    return pd.DataFrame.from_records(records, columns=columns)


def speedups(frame, metric="time_median_s"):
    """baseline / variant for every ok timed row that has a baseline at the same point.

    Layers are compared with full-fused (else full-naive) attention, models with the
    transformer, in the same run, framework, device, dtype, mode, length and widths; where
    the baseline was measured at several seeds (a seed sweep), with the row's own seed."""
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
        baseline = next((n for n in names if (group["variant"] == n).any()), None)
        if baseline is None:
            continue
        bases = group[group["variant"] == baseline]
        for _, row in group.iterrows():
            if row["variant"] == baseline or not row[metric]:
                continue
            base = bases if len(bases) == 1 or "seed" not in bases.columns else \
                bases[bases["seed"] == row["seed"]]
            if len(base) != 1:  # no baseline of its own seed, or still several
                continue
            records.append({"run_id": row["run_id"], "mode": row["mode"],
                            "series": row["series"], "setup": row["setup"],
                            "length": row["length"], "baseline": baseline,
                            "speedup": float(base[metric].iloc[0]) / float(row[metric])})
    return pd.DataFrame.from_records(records, columns=columns)


def scaling_exponents(frame, metrics=("time_median_s", "mem_peak_mb"), min_points=3):
    """Least-squares slope of log(metric) on log(length) per series: ~1 linear, ~2 quadratic
    (the sums of each series at once, not a fit per series: 20,000 cases have thousands)."""
    import numpy as np
    import pandas as pd

    columns = ["metric", "mode", "series", "setup", "exponent", "lengths", "points",
               "rms residual"]
    records = []
    frame = length_series(frame)
    if len(frame):
        frame = frame[frame["status"] == "ok"]
    for metric in metrics:
        if not len(frame) or metric not in frame.columns:
            continue
        points = frame[["series_key", "mode", "series", "setup", metric, "length"]]
        points = points[points[metric].notna() & points["length"].notna()]
        points = points[(points[metric].astype(float) > 0) & (points["length"].astype(float) > 0)]
        if not len(points):
            continue
        x = np.log(points["length"].astype(float).to_numpy())
        y = np.log(points[metric].astype(float).to_numpy())
        keys = points["series_key"].to_numpy()
        groups = pd.DataFrame({"x": x, "y": y}).groupby(keys, sort=False)
        # centred sums: a flat series comes out exactly flat (0, not -1e-17)
        dx = x - groups["x"].transform("mean").to_numpy()
        dy = y - groups["y"].transform("mean").to_numpy()
        sums = pd.DataFrame({"xy": dx * dy, "xx": dx * dx}).groupby(keys, sort=False).sum()
        sums["n"] = groups.size()
        sums["lengths"] = points.groupby("series_key", sort=False)["length"].nunique()
        slope = sums["xy"] / sums["xx"]
        residual = dy - slope.reindex(keys).to_numpy() * dx
        rms = np.sqrt(pd.Series(residual ** 2).groupby(keys, sort=False).mean())
        sums = sums[sums["lengths"] >= min_points]
        if not len(sums):
            continue
        span = points.groupby("series_key", sort=False)["length"].agg(["min", "max"])
        first = points.drop_duplicates("series_key").set_index("series_key")
        for key in sums.index:
            records.append({"metric": metric, "mode": first.at[key, "mode"],
                            "series": first.at[key, "series"],
                            "setup": first.at[key, "setup"], "exponent": float(slope[key]),
                            "lengths": f"{int(span.at[key, 'min'])}-{int(span.at[key, 'max'])}",
                            "points": int(sums.at[key, "n"]),
                            "rms residual": float(rms[key])})
    return pd.DataFrame.from_records(records, columns=columns)
