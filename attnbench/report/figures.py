"""The report's figures: seaborn over the tidy frame, each returned as an SVG, or a note.

Every figure function takes the tidy frame (:func:`attnbench.report.frame.tidy_frame`) and
returns a matplotlib figure, or a :class:`NoData` saying what would be needed to draw it.
:func:`render_all` turns each into a :class:`FigureResult` (SVG text or a note), so a figure
that has no data, or that fails, never stops the report. Axes carry their units.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from attnbench.report import derive, paper

FAILED_STATUSES = ("oom", "timeout", "error")
FAILURE_MARKERS = {"oom": "X", "timeout": "v", "error": "D"}
MAX_PANELS = 6
# More lines (or bars of one panel) than this cannot be told apart by colour and legend, and
# drawing thousands of them takes minutes: the figure says so and the tables hold them.
MAX_SERIES = 40


class NoData(Exception):
    """Raised by a figure function: the note to show instead of the figure."""


class TooMany(Exception):
    """Raised by a figure function: more series than one figure can show (:data:`MAX_SERIES`)."""


def _at_most(count: int, what: str) -> None:
    if count > MAX_SERIES:
        raise TooMany(f"{count:,} {what} are more than one figure can tell apart (at most "
                      f"{MAX_SERIES}); the tables and results.csv hold every one")


@dataclass(frozen=True)
class FigureResult:
    key: str
    title: str
    caption: str
    svg: str | None = None   # the figure, as SVG text
    note: str | None = None  # why there is no figure
    empty: bool = False      # nothing to draw (not an error): listed in one line of the page


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # text.parse_math: a name between dollars is a name, not TeX (a plugin may be named so)
    plt.rcParams.update({"svg.hashsalt": "attnbench", "svg.fonttype": "none",
                         "text.parse_math": False,
                         "figure.dpi": 100, "axes.titlesize": 10, "axes.labelsize": 9,
                         "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 7})
    return plt


def _seaborn():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return sns


def to_svg(fig) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _palette(names):
    sns = _seaborn()
    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl",
                                             len(names)), strict=True))


def _panels(frame, column, limit=MAX_PANELS):
    values = list(dict.fromkeys(frame[column].dropna()))
    return values[:limit]


def _subplots(n, width=5.2, height=3.6, cols=2):
    plt = _pyplot()
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _length_axis(ax):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")


# --------------------------------------------------------------------------------------------
# Time and memory over length
# --------------------------------------------------------------------------------------------


def _with_fit_labels(series_frame):
    """Series cut short by a failure get the largest length that fits in their name."""
    fits = derive.largest_fit(series_frame)
    labels = {}
    for _, row in fits.iterrows():
        if row["failure status"] is not None and not _isnan(row["failure status"]):
            fit = "none" if row["largest ok length"] is None or _isnan(row["largest ok length"]) \
                else f"<= {int(row['largest ok length'])}"
            labels[(row["mode"], row["series"], row["setup"])] = \
                f"{row['series']} (fits {fit}; {row['failure status']} at " \
                f"{int(row['first failure'])})"
    frame = series_frame.copy()
    frame["series"] = [labels.get((m, s, u), s) for m, s, u in
                       zip(frame["mode"], frame["series"], frame["setup"], strict=True)]
    return frame


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _over_length(frame, metric, ylabel, analytic=None):
    sns = _seaborn()
    series = derive.length_series(frame)
    if not len(series) or metric not in series.columns:
        raise NoData(f"no timed cases at two or more lengths with {metric}")
    has_value = series[metric].notna() & (series["status"] == "ok")
    if not has_value.any():
        raise NoData(f"no ok case has {metric} (every case failed or the metric is missing)")
    _at_most(len(series[["mode", "series", "setup"]].drop_duplicates()), "series")
    series = _with_fit_labels(series)
    modes = _panels(series, "mode")
    fig, axes = _subplots(len(modes), width=7.0, height=4.2, cols=1)
    palette = _palette(series["series"])
    for ax, mode in zip(axes, modes, strict=True):
        part = series[series["mode"] == mode]
        ok = part[(part["status"] == "ok") & part[metric].notna()]
        if len(ok):
            sns.lineplot(data=ok, x="length", y=metric, hue="series", style="setup",
                         markers=True, dashes=False, palette=palette, errorbar=None, ax=ax)
        if analytic and analytic in part.columns and part[analytic].notna().any():
            est = part[part[analytic].notna()]
            for (name, _), group in est.groupby(["series", "setup"], sort=False):
                group = group.sort_values("length")
                ax.plot(group["length"], group[analytic], linestyle=":", linewidth=1,
                        color=palette[name], label="_nolegend_")
            ax.plot([], [], linestyle=":", color="grey", label="analytic estimate (dotted)")
        ax.set_yscale("log")
        _length_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{mode}")
        failed = part[part["status"].isin(FAILED_STATUSES)]
        if len(failed):
            top = ax.get_ylim()[1]
            for status, group in failed.groupby("status"):
                ax.scatter(group["length"], [top] * len(group), marker=FAILURE_MARKERS[status],
                           s=60, color=[palette[s] for s in group["series"]],
                           edgecolor="black", zorder=5, clip_on=False,
                           label=f"{status} (drawn at the top)")
        _legend_outside(ax)
    fig.tight_layout()
    return fig


def _legend_outside(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)


def time_vs_length(frame):
    return _over_length(frame, "time_median_s", "median time per step (s)")


def memory_vs_length(frame):
    return _over_length(frame, "mem_peak_mb", "peak memory above baseline (MiB)",
                        analytic="mem_analytic_mb")


def speedup_over_full(frame):
    sns = _seaborn()
    speed = derive.speedups(frame)
    if len(speed):
        key = speed["run_id"] + speed["mode"] + speed["series"] + speed["setup"]
        speed = speed[speed.groupby(key)["length"].transform("nunique") >= 2]
    if not len(speed):
        raise NoData("no variant was measured ok beside its full-attention (or transformer) "
                     "baseline at the same length")
    _at_most(len(speed[["mode", "series", "setup"]].drop_duplicates()), "series")
    modes = _panels(speed, "mode")
    fig, axes = _subplots(len(modes), width=7.0, height=4.0, cols=1)
    palette = _palette(speed["series"])
    for ax, mode in zip(axes, modes, strict=True):
        part = speed[speed["mode"] == mode]
        sns.lineplot(data=part, x="length", y="speedup", hue="series", style="setup",
                     markers=True, dashes=False, palette=palette, errorbar=None, ax=ax)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        _length_axis(ax)
        baselines = ", ".join(sorted(set(part["baseline"])))
        ax.set_ylabel(f"speed-up over {baselines} (x, >1 faster)")
        ax.set_title(mode)
        _legend_outside(ax)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# n_hashes x n_buckets
# --------------------------------------------------------------------------------------------


def _hash_grid_groups(rows, value):
    rows = rows[rows["n_hashes"].notna() & rows["n_buckets"].notna() & rows[value].notna()]
    groups = []
    for key, group in rows.groupby(["run_id", "framework", "mode", "length"], sort=False):
        if group["n_hashes"].nunique() >= 2 and group["n_buckets"].nunique() >= 2:
            groups.append((key, group))
    return groups[:MAX_PANELS]


def _heatmaps(panels, value, label, fmt, cmap):
    sns = _seaborn()
    fig, axes = _subplots(len(panels), width=4.6, height=3.4)
    for ax, ((run_id, framework, mode, length), group) in zip(axes, panels, strict=True):
        grid = group.pivot_table(index="n_hashes", columns="n_buckets", values=value,
                                 aggfunc="median")
        grid.index = [int(i) for i in grid.index]
        grid.columns = [int(c) for c in grid.columns]
        sns.heatmap(grid, annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar_kws={"label": label},
                    annot_kws={"fontsize": 7})
        ax.set_xlabel("n_buckets")
        ax.set_ylabel("n_hashes (rounds)")
        ax.set_title(f"{framework} {mode} L={int(length)} [{run_id}]", fontsize=8)
    fig.tight_layout()
    return fig


def time_hash_grid(frame):
    rows = frame[(frame["variant"] == "lsh") & (frame["status"] == "ok")
                 & frame["mode"].isin(derive.TIMED_MODES)]
    panels = _hash_grid_groups(rows, "time_median_s") if len(rows) else []
    if not panels:
        raise NoData("no LSH timings over two or more n_hashes and n_buckets at one length")
    return _heatmaps([(k, g.assign(time_ms=g["time_median_s"] * 1e3)) for k, g in panels],
                     "time_ms", "median time (ms)", ".3g", "rocket_r")


def error_hash_grid(frame):
    if "approx_out_rel_err" not in frame.columns:
        raise NoData("no approximation results (mode approx)")
    rows = frame[(frame["mode"] == "approx") & (frame["status"] == "ok")]
    panels = _hash_grid_groups(rows, "approx_out_rel_err") if len(rows) else []
    if not panels:
        raise NoData("no approximation errors over two or more n_hashes and n_buckets")
    return _heatmaps(panels, "approx_out_rel_err",
                     "relative output error vs exact shared-QK (-)", ".3f", "mako_r")


# --------------------------------------------------------------------------------------------
# Accuracy against time
# --------------------------------------------------------------------------------------------


def _approx_and_timed(frame, metric: str):
    """The ok approx rows that hold ``metric`` and the ok timed rows with a time, which the
    accuracy-vs-time views pair; NoData when either is missing."""
    if metric not in frame.columns or "time_median_s" not in frame.columns:
        raise NoData("no approximation results (mode approx) to pair with timings")
    approx = frame[(frame["mode"] == "approx") & (frame["status"] == "ok")
                   & frame[metric].notna()]
    timed = frame[frame["mode"].isin(derive.TIMED_MODES) & (frame["status"] == "ok")
                  & frame["time_median_s"].notna()]
    if not len(approx) or not len(timed):
        raise NoData("needs both approximation results and timings")
    return approx, timed


def accuracy_vs_time(frame):
    """Each LSH configuration's attention-mass recall (mode approx) against its time at the
    same length, with exact attention at recall 1; the Pareto front joins the points no
    other point beats on both axes."""
    sns = _seaborn()
    approx, timed = _approx_and_timed(frame, "approx_recall")
    keys = ["run_id", "framework", "length", "n_hashes", "n_buckets"]
    recall = approx.groupby(keys, dropna=False)["approx_recall"].median().reset_index()
    timed = timed.drop(columns=["approx_recall"])
    lsh = timed[timed["variant"] == "lsh"].merge(recall, on=keys)
    exact = timed[timed["variant"].str.startswith("full")].assign(approx_recall=1.0)
    exact = exact[exact.set_index(["run_id", "framework", "length"]).index.isin(
        lsh.set_index(["run_id", "framework", "length"]).index)]
    points = _concat([lsh, exact])
    if not len(points):
        raise NoData("no LSH timing shares run, framework, length, n_hashes and n_buckets "
                     "with an approximation result")
    points = points.assign(
        config=[v if not str(v).startswith("lsh") or _isnan(h) else
                f"lsh h={int(h)} b={int(b)}" for v, h, b in
                zip(points["variant"], points["n_hashes"], points["n_buckets"], strict=True)],
        panel=[f"{m} L={int(n)}" for m, n in zip(points["mode"], points["length"],
                                                 strict=True)])
    panels = _panels(points, "panel")
    fig, axes = _subplots(len(panels), width=7.0, height=4.0, cols=1)
    for ax, panel in zip(axes, panels, strict=True):
        part = points[points["panel"] == panel]
        sns.scatterplot(data=part, x="time_median_s", y="approx_recall", hue="config",
                        style="framework", s=50, ax=ax)
        front = _pareto_front(part, "time_median_s", "approx_recall")
        ax.plot(front["time_median_s"], front["approx_recall"], color="black",
                linewidth=0.8, drawstyle="steps-post", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("median time per step (s)")
        ax.set_ylabel("attention-mass recall (fraction, 1 = exact)")
        ax.set_title(panel)
        _legend_outside(ax)
    fig.tight_layout()
    return fig


def error_vs_time(frame):
    """Each approximate attention's output error against exact attention (mode approx: LSH
    against exact shared-QK, a registered attention against exact softmax) against its time
    at the same length, a panel per timed mode, length and approx inputs; exact attention
    sits at error 0. Registered attentions, which expose no recall, are compared here."""
    sns = _seaborn()
    approx, timed = _approx_and_timed(frame, "approx_out_rel_err")
    approx = approx.assign(inputs=[o.get("inputs", "random") if isinstance(o, dict) else
                                   "random" for o in approx.get("options", [None] * len(approx))])
    keys = ["run_id", "framework", "length", "variant", "n_hashes", "n_buckets"]
    error = approx.groupby([*keys, "inputs"], dropna=False)["approx_out_rel_err"] \
        .median().reset_index()
    approximate = timed.drop(columns=["approx_out_rel_err"]).merge(error, on=keys)
    if not len(approximate):
        raise NoData("no timing shares run, framework, length, variant and LSH settings with "
                     "an approximation result")
    exact = timed[timed["variant"].str.startswith("full")].drop(columns=["approx_out_rel_err"])
    exact = exact.merge(approximate[["run_id", "framework", "length", "inputs"]]
                        .drop_duplicates(), on=["run_id", "framework", "length"])
    points = _concat([approximate, exact.assign(approx_out_rel_err=0.0)])
    points = points.assign(
        config=[f"{v} h={int(h)}" if not _isnan(h) else str(v) for v, h in
                zip(points["variant"], points["n_hashes"], strict=True)],
        panel=[f"{m} L={int(n)}, {i} inputs" for m, n, i in
               zip(points["mode"], points["length"], points["inputs"], strict=True)])
    panels = _panels(points, "panel")
    fig, axes = _subplots(len(panels), width=6.0, height=3.8)
    for ax, panel in zip(axes, panels, strict=True):
        part = points[points["panel"] == panel]
        sns.scatterplot(data=part, x="time_median_s", y="approx_out_rel_err", hue="config",
                        style="framework", s=50, ax=ax)
        ax.set_xscale("log")
        ax.set_xlabel("median time per step (s)")
        ax.set_ylabel("relative output error (0 = exact)")
        ax.set_title(panel, fontsize=9)
        _legend_outside(ax)
    fig.tight_layout()
    return fig


def _concat(frames):
    import pandas as pd

    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _pareto_front(points, cost, value):
    """Points no other point beats on both (lower cost, higher value), by cost."""
    ordered = points.sort_values([cost, value], ascending=[True, False])
    best = -math.inf
    keep = []
    for index, v in zip(ordered.index, ordered[value], strict=True):
        if v > best:
            keep.append(index)
            best = v
    return ordered.loc[keep]


# --------------------------------------------------------------------------------------------
# Synthetic task: accuracy matrix and training curves
# --------------------------------------------------------------------------------------------


def accuracy_matrix(frame):
    """A heatmap per (suite, task, framework, length) setup, at most ``MAX_PANELS - 1`` of
    them (the Table-2 summary has every one), and the paper's matrix."""
    import pandas as pd

    from attnbench.report.table2 import attention_order, setup_of, setup_title, task_cells

    sns = _seaborn()
    cells = task_cells(frame)
    if not cells:
        raise NoData("no synthetic-task results (mode task with a numeric task_eval)")
    ours = pd.DataFrame.from_records(cells)
    several = ours["suite"].nunique() > 1
    ours["setup"] = [setup_title(setup_of(c), several) for c in cells]
    setups = _panels(ours, "setup", limit=MAX_PANELS - 1)
    paper_grid = pd.DataFrame([paper.TABLE2_ACCURACY[t] for t in paper.TABLE2_TRAIN],
                              index=list(paper.TABLE2_TRAIN), columns=list(paper.TABLE2_EVAL))
    fig, axes = _subplots(len(setups) + 1, width=4.8, height=3.4)
    for ax, setup in zip(axes, setups, strict=False):
        grid = ours[ours["setup"] == setup].pivot_table(index="train", columns="eval",
                                                        values="accuracy", aggfunc="mean")
        grid = grid.reindex(index=sorted(grid.index, key=attention_order),
                            columns=sorted(grid.columns, key=attention_order))
        sns.heatmap(grid * 100, annot=True, fmt=".1f", vmin=0, vmax=100, cmap="viridis",
                    ax=ax, cbar_kws={"label": "accuracy (%)"}, annot_kws={"fontsize": 7})
        ax.set_title(f"ours: {setup} (mean over seeds)", fontsize=9)
        ax.set_xlabel("evaluated with")
        ax.set_ylabel("trained with")
    if ours["setup"].nunique() > len(setups):
        fig.suptitle(f"the first {len(setups)} of {ours['setup'].nunique()} setups; the "
                     "Table-2 summary (--table2-markdown) has every one")
    ax = axes[-1]
    sns.heatmap(paper_grid * 100, annot=True, fmt=".1f", vmin=0, vmax=100, cmap="viridis",
                ax=ax, cbar_kws={"label": "accuracy (%)"}, annot_kws={"fontsize": 7})
    ax.set_title("paper, Table 2 (duplication, L=1024)")
    ax.set_xlabel("evaluated with")
    ax.set_ylabel("trained with")
    fig.tight_layout()
    return fig


def accuracy_vs_length(frame):
    """Accuracy against length, a panel per training attention and a line per evaluation
    attention (style: framework, with the suite and task where there are several); only
    series (suite, task, framework) run at two or more lengths; the paper's and the fastai
    reproduction's length-1024 values as marked points; models that used their budget
    without plateauing crossed."""
    import pandas as pd

    from attnbench.report.table2 import attention_order, task_cells

    sns = _seaborn()
    cells = pd.DataFrame.from_records(task_cells(frame))
    if len(cells):
        lengths = cells.groupby(["suite", "task", "framework"])["length"].transform("nunique")
        cells = cells[lengths >= 2]
    if not len(cells):
        raise NoData("no synthetic-task results at two or more lengths")
    named = [c for c in ("suite", "task") if cells[c].nunique() > 1] + ["framework"]
    series = ", ".join(named)  # the legend's title: framework, or suite, framework
    cells = cells.assign(**{series: cells[named].astype(str).agg(", ".join, axis=1)})
    cells = cells.groupby([series, "length", "train", "eval"], as_index=False).agg(
        accuracy=("accuracy", "mean"), converged=("converged", lambda v: False not in set(v)))
    cells["accuracy"] *= 100
    trains = sorted(cells["train"].unique(), key=attention_order)[:MAX_PANELS]
    palette = _palette(sorted(cells["eval"].unique(), key=attention_order))
    fig, axes = _subplots(len(trains), width=4.8, height=3.4)
    for ax, train in zip(axes, trains, strict=True):
        part = cells[cells["train"] == train]
        sns.lineplot(data=part, x="length", y="accuracy", hue="eval", style=series,
                     markers=True, dashes=True, palette=palette, errorbar=None, ax=ax)
        late = part[~part["converged"]]
        if len(late):
            ax.scatter(late["length"], late["accuracy"], marker="x", s=70, color="black",
                       zorder=5, label="not converged (budget used)")
        for table, marker, name in ((paper.TABLE2_ACCURACY, "*", "paper"),
                                    (paper.TABLE2_REPRO_ACCURACY, "o", "fastai repro")):
            if train not in table:
                continue
            for evaluated in part["eval"].unique():
                if evaluated in paper.TABLE2_EVAL:
                    value = 100 * table[train][paper.TABLE2_EVAL.index(evaluated)]
                    ax.scatter([paper.TABLE2_LENGTH], [value], marker=marker, s=70,
                               facecolor=palette[evaluated] if marker == "*" else "none",
                               edgecolor=palette[evaluated], zorder=4)
            ax.scatter([], [], marker=marker, s=50, facecolor="grey" if marker == "*" else
                       "none", edgecolor="grey", label=f"{name}, L={paper.TABLE2_LENGTH}")
        _length_axis(ax)
        ax.set_ylim(-2, 102)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"trained with {train}")
        _legend_outside(ax)
    fig.tight_layout()
    return fig


def training_curves(frame):
    """A panel per (suite, task, length), the first ``MAX_PANELS``: a line per training
    attention (style: framework), so curves of different lengths or suites never merge."""
    import pandas as pd

    sns = _seaborn()
    if "task_loss_curve" not in frame.columns:
        raise NoData("no training curves (task_loss_curve)")
    records = []
    rows = frame[frame["task_loss_curve"].map(lambda v: isinstance(v, list) and bool(v))]
    several = rows["suite"].nunique() > 1 if "suite" in rows.columns else False
    for _, row in rows.iterrows():
        setup = (f"{str(row.get('suite')) + ': ' if several else ''}"
                 f"{row.get('task') or 'task'}, L={int(row['length'])}")
        for point in row["task_loss_curve"]:
            if isinstance(point, list | tuple) and len(point) == 2:
                records.append({"setup": setup, "length": int(row["length"]),
                                "trained with": str(row.get("train_attention")
                                                    or row["variant"]),
                                "framework": row["framework"], "step": point[0],
                                "loss": point[1]})
    if not records:
        raise NoData("no training curves (task_loss_curve)")
    curves = pd.DataFrame.from_records(records).sort_values(["setup", "length"], kind="stable")
    setups = _panels(curves, "setup")
    fig, axes = _subplots(len(setups), width=5.6, height=3.6)
    for ax, setup in zip(axes, setups, strict=True):
        sns.lineplot(data=curves[curves["setup"] == setup], x="step", y="loss",
                     hue="trained with", style="framework", errorbar=None, ax=ax)
        ax.set_yscale("log")
        ax.set_title(setup)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (nats per token)")
        _legend_outside(ax)
    if curves["setup"].nunique() > len(setups):
        fig.suptitle(f"the first {len(setups)} of {curves['setup'].nunique()} setups")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Memory over depth, scaling exponents
# --------------------------------------------------------------------------------------------


def memory_vs_depth(frame):
    sns = _seaborn()
    if "mem_peak_mb" not in frame.columns:
        raise NoData("no peak memory measured")
    rows = frame[frame["mode"].isin(derive.TIMED_MODES) & frame["depth"].notna()]
    if not len(rows):
        raise NoData("no timed model cases")
    rows = derive.with_series(rows)
    keys = [c for c in derive.SERIES_FIELDS if c != "depth" and c in rows.columns] + ["length"]
    rows = rows.assign(stack_key=rows[keys].map(str).agg("|".join, axis=1))
    rows = rows[rows.groupby("stack_key")["depth"].transform("nunique") >= 2]
    if not len(rows):
        raise NoData("no model measured at two or more depths")
    rows = rows.assign(stack=[f"{s.split(' depth=')[0]} L={int(n)}" for s, n in
                              zip(rows["series"], rows["length"], strict=True)])
    modes = _panels(rows, "mode")
    fig, axes = _subplots(len(modes), width=7.0, height=4.0, cols=1)
    palette = _palette(rows["stack"])
    for ax, mode in zip(axes, modes, strict=True):
        part = rows[rows["mode"] == mode]
        ok = part[(part["status"] == "ok") & part["mem_peak_mb"].notna()]
        if len(ok):
            sns.lineplot(data=ok, x="depth", y="mem_peak_mb", hue="stack", style="setup",
                         markers=True, dashes=False, palette=palette, errorbar=None, ax=ax)
        failed = part[part["status"].isin(FAILED_STATUSES)]
        top = ax.get_ylim()[1]
        for status, group in failed.groupby("status"):
            ax.scatter(group["depth"], [top] * len(group), marker=FAILURE_MARKERS[status],
                       s=60, color=[palette[s] for s in group["stack"]], edgecolor="black",
                       clip_on=False, zorder=5, label=f"{status} (drawn at the top)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("peak memory above baseline (MiB)")
        ax.set_title(mode)
        _legend_outside(ax)
    fig.tight_layout()
    return fig


def scaling_exponent_bars(frame):
    sns = _seaborn()
    fits = derive.scaling_exponents(frame)
    if not len(fits):
        raise NoData("no series has ok results at three or more lengths")
    _at_most(int(fits.groupby("metric").size().max()), "fitted series")  # bars of a panel
    fits = fits.assign(name=fits["series"] + " | " + fits["mode"])
    metrics = _panels(fits, "metric")
    fig, axes = _subplots(len(metrics), width=7.0, height=1.0 + 0.3 * len(fits) / len(metrics),
                          cols=1)
    labels = {"time_median_s": "time", "mem_peak_mb": "peak memory"}
    for ax, metric in zip(axes, metrics, strict=True):
        part = fits[fits["metric"] == metric]
        sns.barplot(data=part, y="name", x="exponent", hue="setup", ax=ax)
        for x, style in ((1, "--"), (2, ":")):
            ax.axvline(x, color="black", linewidth=0.8, linestyle=style)
        ax.set_xlabel(f"exponent b in {labels.get(metric, metric)} ~ length^b (log-log fit)")
        ax.set_ylabel("")
        ax.set_title(labels.get(metric, metric))
        _legend_outside(ax)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------


FIGURES = (
    ("time-vs-length", "Time vs sequence length", time_vs_length,
     "Median time per step, log-log, per variant (colour) and framework (marker). Cases that "
     "ran out of memory, timed out or failed are marked at the top of the panel; a series "
     "cut short says the largest length that fits."),
    ("memory-vs-length", "Peak memory vs sequence length", memory_vs_length,
     "Measured peak memory above the baseline (solid) and the paper's complexity-table "
     "estimate (dotted, same colour)."),
    ("speedup", "Speed-up over full attention", speedup_over_full,
     "Baseline time / variant time at the same point of the same run (layers against "
     "full-fused attention, models against the transformer; in a seed sweep, the baseline "
     "of the same seed). Above 1 is faster."),
    ("scaling", "Scaling exponents", scaling_exponent_bars,
     "Slope of a least-squares line through log(metric) vs log(length): 1 is linear, 2 "
     "quadratic (dashed and dotted lines)."),
    ("time-hash-grid", "LSH time over n_hashes x n_buckets", time_hash_grid,
     "Median time (ms) of LSH attention per number of hash rounds and buckets."),
    ("error-hash-grid", "LSH approximation error over n_hashes x n_buckets", error_hash_grid,
     "Relative error of the LSH output against exact shared-QK attention on the same inputs."),
    ("accuracy-vs-time", "Accuracy vs time (Pareto view)", accuracy_vs_time,
     "Attention-mass recall of each LSH configuration against its time at the same length; "
     "exact attention sits at recall 1."),
    ("error-vs-time", "Approximation error vs time", error_vs_time,
     "Relative output error of each approximate attention against its time at the same "
     "length: LSH against exact shared-QK attention, a registered attention (which exposes "
     "no recall) against exact softmax attention, both on the approx mode's inputs; exact "
     "attention sits at 0. Lower left is better."),
    ("accuracy-matrix", "Train x eval accuracy on the synthetic task", accuracy_matrix,
     "Rows: attention used in training; columns: attention used in evaluation; a matrix per "
     "suite, task, framework and length. The paper's Table 2 is drawn beside ours (its task "
     "is length 1024 and 150K steps; ours may be smaller, so compare the pattern, not the "
     "numbers)."),
    ("accuracy-vs-length", "Synthetic-task accuracy vs sequence length", accuracy_vs_length,
     "Each train x eval cell against length: a panel per attention used in training, a line "
     "per attention used in evaluation (style: framework, with the suite where several ran "
     "over length). Stars: the paper's Table 2 at "
     "length 1024; rings: the fastai reproduction's; crosses: models that used their whole "
     "step budget without their loss plateauing."),
    ("training-curves", "Training curves", training_curves,
     "Training loss per step of each synthetic-task model: a panel per suite, task and "
     "length, a line per attention used in training (style: framework)."),
    ("memory-vs-depth", "Memory vs depth", memory_vs_depth,
     "Peak memory of whole models over the number of layers: reversible stacks should stay "
     "nearly flat, plain residual stacks grow linearly."),
)


def render_all(frame) -> list[FigureResult]:
    results = []
    for key, title, draw, caption in FIGURES:
        results.append(render_one(key, title, caption, draw, frame))
    return results


def render_one(key, title, caption, draw, *args) -> FigureResult:
    plt = _pyplot()
    try:
        fig = draw(*args)
        svg = to_svg(fig)  # drawing happens here: it can fail as the figure's code can
    except NoData as missing:
        plt.close("all")
        return FigureResult(key, title, caption, note=f"Nothing to draw: {missing}.", empty=True)
    except TooMany as crowded:
        plt.close("all")
        return FigureResult(key, title, caption, note=f"Not drawn: {crowded}.")
    except Exception as exc:  # a figure that fails must not take the report down
        plt.close("all")
        return FigureResult(key, title, caption,
                            note=f"This figure could not be drawn: {type(exc).__name__}: {exc}")
    return FigureResult(key, title, caption, svg=svg)
