"""``attnbench publish``: the performance history as a static, self-contained site.

Pages (every one inline CSS and inline SVG drawn here, no script, no request off the machine;
every text from the data goes through :func:`esc`):

- ``index.html``: every series, grouped by machine (its parts in brief) and then by case:
  the metric and its direction, the latest value (or the latest failure, as its status), a
  sparkline of the trend, the latest step and its verdict, a link to the case's page. Ratio
  series (no machine) have their own section: they are shared by every machine.
- ``case-<slug>-<hash>.html``: one page per (machine, case), or per ratio contract, with a
  chart per metric against the commits in timeline order: each point's band (``lo``-``hi``)
  as an error bar, unstable points hollow (their reasons in the tooltip), failures written as
  their status (``oom``, ``timeout``...) at their place on the timeline, steps drawn with
  their levels, commits and verdicts; each point links to its run's report; a table of the
  points under each chart. The name hashes the machine's fingerprint and the case id, so it
  stays the same from one publish (or one rebuild of the database) to the next.
- ``regressions.html``: every step, regressions first, with its series, commits, ratio,
  evidence and verdict.
- ``site.json``: the case pages this command wrote, so that a page whose case is gone can be
  removed on the next publish without touching any other file in the directory.

Publishing again rewrites only the files whose bytes changed: nothing in a page depends on
the time of publishing or on anything outside its own series, and everything is sorted.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import stat
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.history.model import (
    HIGHER,
    LOWER,
    METRICS,
    RATIO,
    REGRESSION,
    History,
    Machine,
    Point,
    Run,
    Series,
    Step,
)
from attnbench.ratios import within_bounds
from attnbench.safeio import UnsafePathError, read_bytes, write_atomic
from attnbench.units import format_seconds

INDEX, REGRESSIONS, MANIFEST = "index.html", "regressions.html", "site.json"
MANIFEST_FORMAT = "attnbench-history-site"
# The only names site.json may list (and so the only files publish ever removes).
CASE_PAGE = re.compile(r"case-[a-z0-9][a-z0-9-]{0,120}\.html")
NOT_CONFIRMED = "not yet confirmed"
METRIC_NAMES = {
    "time_median_s": "time (median)",
    "mem_peak_mb": "peak memory",
    "task_accuracy": "task accuracy",
    "approx_out_rel_err": "approximation error, output (relative)",
    "approx_grad_rel_err": "approximation error, gradient (relative)",
    "approx_recall": "approximation recall",
    RATIO: "ratio",
}
METRIC_ORDER = [*METRICS, RATIO]
FAILURE_COLOURS = {"skipped": "#757575"}   # every other status: red
FAIL_RED, REGRESSION_RED, IMPROVEMENT_GREEN = "#c62828", "#c62828", "#2e7d32"
LIMIT_COLOUR = "#212121"   # a contract's bound on a ratio chart: no machine's colour
SERIES_BLUE = "#1f5fa8"
MACHINE_COLOURS = ("#1f5fa8", "#8e24aa", "#00897b", "#ef6c00", "#5d4037", "#3949ab",
                   "#c0ca33", "#6d4c41")
VERDICT_RANK = {"confirmed": 0, None: 1, "inconclusive": 2, "not reproduced": 3}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 1.5rem 3rem; color: #1c1c1c; line-height: 1.4; }
h1 { margin-top: 1.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem;
margin-top: 2.2rem; } h3 { margin: 1.6rem 0 .3rem; }
nav { display: flex; flex-wrap: wrap; gap: .2rem .9rem; font-size: .9rem; }
table { border-collapse: collapse; font-size: .8rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.fail td { background: #fff1f0; } tr.unstable td { background: #fff8e1; }
tr.regression td.kind { color: #c62828; font-weight: 600; }
tr.improvement td.kind { color: #2e7d32; font-weight: 600; }
.status { color: #c62828; font-weight: 600; } .status.skipped { color: #757575; }
.verdict-confirmed { font-weight: 600; } .muted { color: #666; font-weight: normal; }
.caption { color: #555; font-size: .85rem; max-width: 60rem; }
.note { background: #fffbe6; border: 1px solid #f0e0a0; padding: .4rem .7rem;
        max-width: 60rem; font-size: .9rem; }
.scroll { overflow-x: auto; } code { font-size: .85em; }
svg.chart { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
svg.spark { vertical-align: middle; }
details summary { cursor: pointer; color: #333; font-size: .85rem; }
ul.steps { font-size: .85rem; margin: .3rem 0; }
"""


@dataclass
class PublishResult:
    written: list[Path] = field(default_factory=list)     # files rewritten (or new)
    unchanged: list[Path] = field(default_factory=list)   # files left as they were
    removed: list[Path] = field(default_factory=list)     # stale case pages of an earlier publish


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------------------------
# Numbers and words
# --------------------------------------------------------------------------------------------


def finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def direction_words(direction: str) -> str:
    return {LOWER: "lower is better", HIGHER: "higher is better"}.get(direction,
                                                                      f"{direction} is better")


def direction_arrow(direction: str) -> str:
    return {LOWER: "\u2193", HIGHER: "\u2191"}.get(direction, "")


def fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if not finite(value):
        return str(value)
    if metric == "time_median_s":
        return format_seconds(value)
    if metric.endswith("_mb"):
        return f"{value / 1024:.4g} GiB" if abs(value) >= 10240 else f"{value:.4g} MiB"
    return f"{value:.4g}"


def axis_scale(metric: str, values: list[float]) -> tuple[float, str]:
    """The divisor and unit of a chart's y axis (one unit for the whole axis)."""
    top = max((abs(v) for v in values), default=0.0)
    if metric == "time_median_s":
        for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
            if top >= scale:
                return scale, unit
        return 1e-9, "ns"
    if metric.endswith("_mb"):
        return (1024.0, "GiB") if top >= 10240 else (1.0, "MiB")
    return 1.0, ""


def ratio_short(ratio: float) -> str:
    return f"\u00d7{ratio:.3g}" if finite(ratio) else f"\u00d7{ratio}"


def fmt_ratio(ratio: float) -> str:
    if not finite(ratio):
        return str(ratio)
    return f"\u00d7{ratio:.3g} ({(ratio - 1) * 100:+.1f}%)"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def short_sha(sha: str | None) -> str:
    return sha[:7] if sha else "no commit"


def verdict_words(verdict: str | None) -> str:
    return verdict if verdict else NOT_CONFIRMED


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9 and k < 50:
        ticks.append(first + k * step)
        k += 1
    return ticks


def compact(value: Any, limit: int = 160) -> str:
    """A value of an evidence dictionary, short."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str | int | bool) or value is None:
        text = str(value)
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
        except (TypeError, ValueError):
            text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def summarise(details: dict[str, Any], limit: int = 300) -> str:
    if not isinstance(details, dict) or not details:
        return ""
    text = "; ".join(f"{key}: {compact(details[key])}" for key in sorted(details, key=str))
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def machine_brief(machine: Machine | None, machine_id: int | None) -> str:
    """Machine.parts in one line: CPU and count, memory, GPUs, framework versions."""
    if machine is None:
        return f"machine #{machine_id} (not in the history)"
    parts = dict(machine.parts) if isinstance(machine.parts, dict) else {}
    words = []
    if "cpu" in parts:
        cpu = str(parts.pop("cpu"))
        count = parts.pop("cpu_count", None)
        words.append(f"{cpu} \u00d7 {count} CPUs" if count is not None else cpu)
    elif "cpu_count" in parts:
        words.append(f"{parts.pop('cpu_count')} CPUs")
    if "memory_total_gib" in parts:
        words.append(f"{parts.pop('memory_total_gib')} GiB")
    gpus = parts.pop("gpus", None)
    if isinstance(gpus, list) and gpus:
        counts: dict[str, int] = defaultdict(int)
        for name in gpus:
            counts[str(name)] += 1
        words.append("GPU " + ", ".join(f"{n} \u00d7 {c}" if c > 1 else n
                                        for n, c in sorted(counts.items())))
    elif isinstance(gpus, list):
        words.append("no GPU")
    for key in sorted(parts, key=str):
        words.append(f"{key} {compact(parts[key], 60)}")
    return ", ".join(words) if words else "no parts recorded"


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "case"


# --------------------------------------------------------------------------------------------
# The site's structure: pages, their names, the links to the runs' reports
# --------------------------------------------------------------------------------------------


PageKey = tuple[int | None, str]   # (machine id, or None for a ratio; case id)


def metric_rank(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)


def page_names(history: History, keys: Iterable[PageKey],
               labels: dict[PageKey, str] | None = None) -> dict[PageKey, str]:
    """``case-<slug of the label>-<hash of (machine fingerprint, case id)>.html``: the same
    name for the same case on the same machine however the database numbers them (the label
    only makes the name readable; the hash tells pages apart)."""
    labels = labels or {}

    def name(key: PageKey, salt: str) -> str:
        machine_id, case_id = key
        if machine_id is None:
            owner = "ratio"
        else:
            machine = history.machines.get(machine_id)
            owner = machine.fingerprint if machine is not None else f"machine-{machine_id}"
        digest = hashlib.sha256(f"{owner}\0{case_id}{salt}".encode(
            "utf-8", errors="backslashreplace")).hexdigest()[:12]
        return f"case-{slug(labels.get(key) or case_id)}-{digest}.html"

    keys = sorted(keys, key=lambda k: (k[0] is not None, k[0] or 0, k[1]))
    names = {key: name(key, "") for key in keys}
    seen: dict[str, int] = defaultdict(int)
    for n in names.values():
        seen[n] += 1
    for key, n in names.items():   # two machines of one fingerprint: tell them apart by id
        if seen[n] > 1:
            names[key] = name(key, f"\0{key[0]}")
    return names


def default_report_url(out_dir: Path) -> Callable[[Run], str | None]:
    """A relative link from ``out_dir`` to the run's report (``<Run.path>/index.html``; a
    pytest-benchmark JSON file is linked itself, having no report of its own)."""
    base = os.path.abspath(out_dir)

    def url(run: Run) -> str | None:
        if not run.path:
            return None
        target = os.path.abspath(run.path)
        if run.kind != "pytest-benchmark":
            target = os.path.join(target, "index.html")
        relative = os.path.relpath(target, base).replace(os.sep, "/")
        return urllib.parse.quote(relative, safe="/", errors="backslashreplace")

    return url


def safe_link(url: str | None) -> str | None:
    """A link a page may hold: relative, or http(s)/file; anything else (javascript:) none."""
    if not url or not isinstance(url, str):
        return None
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in ("", "http", "https", "file") else None


class Site:
    """What every page needs, computed once."""

    def __init__(self, history: History, title: str, report_url: Callable[[Run], str | None]):
        self.history, self.title = history, title
        self.series = sorted(history.series.values(), key=lambda s: s.id)
        groups: dict[PageKey, list[Series]] = defaultdict(list)
        for s in self.series:
            groups[(s.machine_id, s.case_id)].append(s)
        self.groups = {key: sorted(group, key=lambda s: (metric_rank(s.metric), s.id))
                       for key, group in groups.items()}
        self.names = page_names(history, self.groups,
                                {key: self.case_label(key) for key in self.groups})
        self.points = {s.id: sorted(history.points.get(s.id, []), key=lambda p: p.position)
                       for s in self.series}   # stable: ties keep the database's order
        self.steps: dict[int, list[Step]] = defaultdict(list)
        for step in sorted(history.steps, key=step_order):
            self.steps[step.series_id].append(step)
        self.report_url = report_url
        self._links: dict[int, str | None] = {}
        self.anchors = {s.id: anchor for group in self.groups.values()
                        for s, anchor in zip(group, section_ids(group), strict=True)}

    def link(self, run_id: int) -> str | None:
        if run_id not in self._links:
            run = self.history.runs.get(run_id)
            self._links[run_id] = safe_link(self.report_url(run)) if run is not None else None
        return self._links[run_id]

    def page_of(self, series: Series) -> str:
        return self.names[(series.machine_id, series.case_id)]

    def series_href(self, series: Series) -> str:
        return f"{self.page_of(series)}#{self.anchors[series.id]}"

    def case_label(self, key: PageKey) -> str:
        labels = sorted({s.label for s in self.groups[key]})
        return labels[-1] if labels else key[1]


def step_order(step: Step) -> tuple:
    return (step.series_id, step.id is None, step.id or 0, step.before_sha or "",
            step.after_sha or "", step.ratio if finite(step.ratio) else 0.0)


def section_ids(group: list[Series]) -> list[str]:
    ids, seen = [], set()
    for s in group:
        base = f"m-{slug(s.metric, 40)}"
        anchor, n = base, 1
        while anchor in seen:
            n += 1
            anchor = f"{base}-{n}"
        seen.add(anchor)
        ids.append(anchor)
    return ids


# --------------------------------------------------------------------------------------------
# Charts (inline SVG, by hand)
# --------------------------------------------------------------------------------------------

W, H = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 34, 58


def f1(x: float) -> str:
    return f"{x:.1f}"


@dataclass
class Timeline:
    """The commits of one page, in order: every distinct position of its points is a slot."""

    slots: list[float]
    labels: list[str]

    @classmethod
    def of(cls, points: Iterable[Point]) -> Timeline:
        first_sha: dict[float, str | None] = {}
        for p in sorted(points, key=lambda p: p.position):
            first_sha.setdefault(p.position, p.sha)
        slots = sorted(first_sha)
        return cls(slots, [short_sha(first_sha[s]) for s in slots])

    def __post_init__(self) -> None:
        self.index = {position: i for i, position in enumerate(self.slots)}
        self.width = (W - LEFT - RIGHT) / max(1, len(self.slots))

    def x(self, position: float, offset: float = 0.0) -> float:
        return LEFT + (self.index[position] + 0.5 + offset) * self.width


def point_tooltip(site: Site, series: Series, p: Point) -> str:
    run = site.history.runs.get(p.run_id)
    lines = [short_sha(p.sha) + (" (dirty)" if run is not None and run.dirty else "")
             + (f" \u00b7 {run.committed_at}" if run is not None and run.committed_at else "")]
    if p.status == "ok" and p.value is not None:
        value = fmt_value(series.metric, p.value)
        if p.lo is not None and p.hi is not None:
            value += (f" (band {fmt_value(series.metric, p.lo)} \u2013 "
                      f"{fmt_value(series.metric, p.hi)})")
        lines.append(value)
    else:
        lines.append(f"failed: {p.status}" + (f": {p.error}" if p.error else ""))
    if p.samples is not None:
        lines.append(f"{p.samples} samples")
    wants = [f"{sign} {v:g}" for sign, v in (("\u2265", p.bound_lo), ("\u2264", p.bound_hi))
             if finite(v)]
    if wants:
        met = is_value(p) and within_bounds(p.value, p.bound_lo, p.bound_hi)
        lines.append(f"contract: want {' and '.join(wants)}: "
                     + ("met" if met else "missed" if is_value(p) else "not measured"))
    if p.unstable:
        lines.append("unstable: " + ("; ".join(p.unstable_reasons) or "no reason recorded"))
    if run is not None:
        machine = site.history.machines.get(run.machine_id) if run.machine_id is not None \
            else None
        lines.append(f"run {run.run_id}" + (f" on {machine.fingerprint[:12]}"
                                            if machine is not None and series.machine_id is None
                                            else ""))
    return "\n".join(lines)


def is_value(p: Point) -> bool:
    return p.status == "ok" and finite(p.value)


def locate_step(step: Step, points: list[Point], timeline: Timeline) -> float | None:
    """The x of a step on a chart: between its two commits' slots."""
    before = after = None
    for p in points:
        if step.before_sha is not None and p.sha == step.before_sha:
            before = timeline.index[p.position]
    for p in points:
        i = timeline.index[p.position]
        if step.after_sha is not None and p.sha == step.after_sha and (before is None
                                                                        or i > before):
            after = i
            break
    if before is not None and after is not None:
        return LEFT + ((before + after) / 2 + 0.5) * timeline.width
    if after is not None:
        return LEFT + after * timeline.width
    if before is not None:
        return LEFT + (before + 1) * timeline.width
    return None


def step_caption(series: Series, step: Step) -> str:
    return (f"{step.kind} {fmt_ratio(step.ratio)} between {short_sha(step.before_sha)} and "
            f"{short_sha(step.after_sha)}: {fmt_value(series.metric, step.before_value)} \u2192 "
            f"{fmt_value(series.metric, step.after_value)}; {verdict_words(step.verdict)}")


def point_colour(site: Site, series: Series, p: Point, colours: dict[int | None, str]) -> str:
    if series.machine_id is not None:
        return SERIES_BLUE
    run = site.history.runs.get(p.run_id)
    return colours.get(run.machine_id if run is not None else None, "#424242")


def chart(site: Site, series: Series, timeline: Timeline,
          colours: dict[int | None, str]) -> str:
    points = site.points[series.id]
    steps = site.steps.get(series.id, [])
    ph, pw = H - TOP - BOTTOM, W - LEFT - RIGHT
    values = [p.value for p in points if is_value(p)]
    bands = [v for p in points if is_value(p) for v in (p.lo, p.hi) if finite(v)]
    levels = [v for s in steps for v in (s.before_value, s.after_value) if finite(v)]
    limits = [v for p in points for v in (p.bound_lo, p.bound_hi) if finite(v)]
    every = values + bands + levels + limits
    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="{esc(series.label)}: {esc(metric_name(series.metric))}">'
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fcfcfc" '
           'stroke="#ccc"/>']
    scale, unit = axis_scale(series.metric, values or every)
    if every:
        lo, hi = min(every), max(every)
        pad = (hi - lo) * 0.06 or (abs(hi) * 0.05 or 1.0)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = 0.0, 1.0

    def y(v: float) -> float:
        return TOP + (hi - v) / (hi - lo) * ph

    # axes: y ticks and grid, the unit, the direction; x: commits (thinned to about 14)
    for t in nice_ticks(lo, hi):
        yy = y(t)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{f1(yy)}" y2="{f1(yy)}" '
                   f'stroke="#eee"/><text x="{LEFT - 6}" y="{f1(yy + 3.5)}" font-size="10" '
                   f'text-anchor="end" fill="#555">{esc(f"{t / scale:.4g}")}</text>')
    axis_title = metric_name(series.metric) + (f" ({unit})" if unit else "")
    out.append(f'<text x="14" y="{TOP + ph / 2:.1f}" font-size="11" fill="#333" '
               f'text-anchor="middle" transform="rotate(-90 14 {TOP + ph / 2:.1f})">'
               f'{esc(axis_title)}</text>'
               f'<text x="{W - RIGHT}" y="{H - 4}" font-size="10" fill="#555" '
               f'text-anchor="end">{esc(direction_arrow(series.direction))} '
               f'{esc(direction_words(series.direction))}</text>')
    n = len(timeline.slots)
    stride = max(1, math.ceil(n / 14))
    for i in range(0, n, stride):
        xx = LEFT + (i + 0.5) * timeline.width
        out.append(f'<text font-size="9" fill="#555" text-anchor="end" '
                   f'transform="translate({f1(xx)} {H - BOTTOM + 12}) rotate(-35)">'
                   f"{esc(timeline.labels[i])}</text>")
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{H - 4}" font-size="10" fill="#555" '
               'text-anchor="middle">commits, oldest to newest</text>')

    # steps: a line between the two commits, the levels on each side, the verdict above
    located = sorted(((x, step) for step in steps
                      if (x := locate_step(step, points, timeline)) is not None),
                     key=lambda item: item[0])
    for k, (x, step) in enumerate(located):
        colour = REGRESSION_RED if step.kind == REGRESSION else IMPROVEMENT_GREEN
        left = located[k - 1][0] if k > 0 else LEFT
        right = located[k + 1][0] if k + 1 < len(located) else W - RIGHT
        tip = esc(step_caption(series, step))
        out.append(f'<g class="step"><title>{tip}</title>'
                   f'<line x1="{f1(x)}" x2="{f1(x)}" y1="{TOP}" y2="{TOP + ph}" '
                   f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 3"/>')
        for a, b, v in ((left, x, step.before_value), (x, right, step.after_value)):
            if finite(v):
                out.append(f'<line x1="{f1(a)}" x2="{f1(b)}" y1="{f1(y(v))}" y2="{f1(y(v))}" '
                           f'stroke="{colour}" stroke-opacity=".45" stroke-width="2"/>')
        anchor = "end" if x > W - 200 else ("start" if x < LEFT + 120 else "middle")
        label = (f"{short_sha(step.before_sha)}\u2192{short_sha(step.after_sha)} "
                 f"{ratio_short(step.ratio)} {step.kind}, {verdict_words(step.verdict)}")
        out.append(f'<text x="{f1(x)}" y="{TOP - 6 - 12 * (k % 2)}" font-size="10" '
                   f'fill="{colour}" text-anchor="{anchor}">{esc(label)}</text></g>')

    # a contract's bounds: a dashed level over each slot whose run had it (a suite may
    # change its limit), named once at its newest slot
    for name, sign in (("bound_lo", "\u2265"), ("bound_hi", "\u2264")):
        held = [(timeline.x(p.position), v) for p in points
                if finite(v := getattr(p, name))]
        if not held:
            continue
        half = timeline.width / 2
        path = "".join(f"M{f1(xx - half)} {f1(y(v))}H{f1(xx + half)}" for xx, v in held)
        xx, v = max(held)
        out.append(f'<g class="limit"><title>contract: want {sign} {v:g}</title>'
                   f'<path d="{path}" stroke="{LIMIT_COLOUR}" stroke-width="1.5" '
                   f'stroke-dasharray="6 3" fill="none"/><text x="{f1(min(xx + half, W - RIGHT))}" '
                   f'y="{f1(y(v) - 4)}" font-size="10" fill="{LIMIT_COLOUR}" '
                   f'text-anchor="end">limit {sign} {v:g}</text></g>')

    # each slot may hold several points (a commit run twice, or on several machines)
    in_slot: dict[float, int] = defaultdict(int)
    for p in points:
        in_slot[p.position] += 1
    seen: dict[float, int] = defaultdict(int)
    offsets = []
    for p in points:
        k, m = seen[p.position], in_slot[p.position]
        seen[p.position] += 1
        offsets.append(0.0 if m == 1 else (k / (m - 1) - 0.5) * 0.6)

    # the uncertainty: one path of error bars; the trend: a line per machine through values
    bars = []
    cap = min(3.0, timeline.width * 0.3)
    lines: dict[str, list[str]] = defaultdict(list)
    for p, off in zip(points, offsets, strict=True):
        if not is_value(p):
            continue
        xx = timeline.x(p.position, off)
        lines[point_colour(site, series, p, colours)].append(f"{f1(xx)},{f1(y(p.value))}")
        if finite(p.lo) and finite(p.hi):
            y1, y2 = y(p.lo), y(p.hi)
            bars.append(f"M{f1(xx)} {f1(y1)}V{f1(y2)}")
            if cap >= 1.5:
                bars.append(f"M{f1(xx - cap)} {f1(y1)}H{f1(xx + cap)}"
                            f"M{f1(xx - cap)} {f1(y2)}H{f1(xx + cap)}")
    for colour, coords in sorted(lines.items()):
        out.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{colour}" '
                   'stroke-opacity=".35" stroke-width="1"/>')
    if bars:
        out.append(f'<path class="bands" d="{"".join(bars)}" stroke="#555" '
                   'stroke-opacity=".6" stroke-width="1" fill="none"/>')

    # the points: stable filled, unstable hollow, failures written as their status
    radius = 3.0 if timeline.width >= 3 else 2.0
    for p, off in zip(points, offsets, strict=True):
        xx = timeline.x(p.position, off)
        tip = esc(point_tooltip(site, series, p))
        if is_value(p):
            colour = point_colour(site, series, p, colours)
            if p.unstable:
                mark = (f'<circle class="unstable" cx="{f1(xx)}" cy="{f1(y(p.value))}" '
                        f'r="{radius + 0.8}" fill="#fff" stroke="{colour}" '
                        f'stroke-width="1.6"><title>{tip}</title></circle>')
            else:
                mark = (f'<circle class="stable" cx="{f1(xx)}" cy="{f1(y(p.value))}" '
                        f'r="{radius}" fill="{colour}"><title>{tip}</title></circle>')
        else:
            status = p.status if p.status != "ok" else "no value"
            colour = FAILURE_COLOURS.get(status, FAIL_RED)
            mark = (f'<g class="failure"><title>{tip}</title>'
                    f'<line x1="{f1(xx)}" x2="{f1(xx)}" y1="{TOP}" y2="{TOP + ph}" '
                    f'stroke="{colour}" stroke-opacity=".5" stroke-dasharray="2 2"/>'
                    f'<text font-size="10" font-weight="600" fill="{colour}" '
                    f'transform="translate({f1(xx - 3.5)} {TOP + 4}) rotate(90)">'
                    f"{esc(status)}</text></g>")
        href = site.link(p.run_id)
        out.append(f'<a href="{esc(href)}">{mark}</a>' if href else mark)
    if not points:
        out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{TOP + ph / 2:.1f}" font-size="12" '
                   'fill="#777" text-anchor="middle">no points</text>')
    elif not values:
        out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{TOP + ph / 2:.1f}" font-size="12" '
                   'fill="#777" text-anchor="middle">no value measured: every point '
                   'failed</text>')
    out.append("</svg>")
    return "".join(out)


SPARK_W, SPARK_H, SPARK_BINS = 120, 24, 60


def sparkline(site: Site, series: Series) -> str:
    """The trend in 120x24 pixels: the median of each of at most 60 bins of the timeline,
    failures as red ticks at the bottom, the latest point as a dot (hollow: unstable)."""
    points = site.points[series.id]
    if not points:
        return ""
    n = len(points)
    bins = min(n, SPARK_BINS)
    medians: list[tuple[int, float]] = []
    failed: list[int] = []
    for b in range(bins):
        chunk = points[b * n // bins:(b + 1) * n // bins]
        values = sorted(p.value for p in chunk if is_value(p))
        if values:
            m = len(values)
            medians.append((b, values[m // 2] if m % 2 else (values[m // 2 - 1]
                                                             + values[m // 2]) / 2))
        if any(not is_value(p) for p in chunk):
            failed.append(b)

    def x(b: int) -> float:
        return 2 + (b + 0.5) * (SPARK_W - 4) / bins

    out = [f'<svg class="spark" viewBox="0 0 {SPARK_W} {SPARK_H}" width="{SPARK_W}" '
           f'height="{SPARK_H}" role="img" aria-label="trend">']
    y = None
    if medians:
        lo, hi = min(v for _, v in medians), max(v for _, v in medians)
        span = hi - lo or (abs(hi) or 1.0)

        def y(v: float) -> float:
            return SPARK_H - 5 - (v - lo) / span * (SPARK_H - 9) if hi > lo else SPARK_H / 2

        coords = " ".join(f"{f1(x(b))},{f1(y(v))}" for b, v in medians)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{SERIES_BLUE}" '
                   'stroke-width="1.2"/>')
    for b in failed:
        out.append(f'<line x1="{f1(x(b))}" x2="{f1(x(b))}" y1="{SPARK_H - 4}" y2="{SPARK_H}" '
                   f'stroke="{FAIL_RED}" stroke-width="1.5"/>')
    last = points[-1]
    if is_value(last) and y is not None:
        fill = "#fff" if last.unstable else SERIES_BLUE
        out.append(f'<circle cx="{f1(x(bins - 1))}" cy="{f1(y(last.value))}" r="2.4" '
                   f'fill="{fill}" stroke="{SERIES_BLUE}" stroke-width="1.2"/>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------


def page(title: str, heading: str, subtitle: str, nav: list[tuple[str, str]],
         body: list[str]) -> str:
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for href, label in nav)
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(heading)}</h1><p class=\"caption\">{esc(subtitle)}</p>"
            f"<nav>{links}</nav>{''.join(body)}"
            '<p class="caption muted">Written by attnbench publish.</p></body></html>\n')


def latest_step(site: Site, series: Series) -> Step | None:
    """The step latest on the timeline (one not found on it counts as earliest)."""
    steps = site.steps.get(series.id, [])
    if not steps:
        return None
    points = site.points[series.id]
    timeline = Timeline.of(points)
    return max(steps, key=lambda s: (locate_step(s, points, timeline) or -1.0))


def latest_cell(series: Series, points: list[Point]) -> str:
    if not points:
        return '<span class="muted">no points</span>'
    last = points[-1]
    if is_value(last):
        text = esc(fmt_value(series.metric, last.value))
        return text + (' <span class="muted" title="unstable">(unstable)</span>'
                       if last.unstable else "")
    status = last.status if last.status != "ok" else "no value"
    before = next((p for p in reversed(points) if is_value(p)), None)
    tail = (f' <span class="muted">(last value {esc(fmt_value(series.metric, before.value))}'
            f" at {esc(short_sha(before.sha))})</span>") if before is not None else ""
    return f'<span class="status {esc(slug(status, 20))}">{esc(status)}</span>{tail}'


def step_cells(series: Series, step: Step | None) -> str:
    if step is None:
        return '<td class="muted">none</td><td></td>'
    verdict = verdict_words(step.verdict)
    return (f'<td title="{esc(step_caption(series, step))}">{esc(step.kind)} '
            f"{esc(fmt_ratio(step.ratio))} at {esc(short_sha(step.before_sha))}\u2192"
            f"{esc(short_sha(step.after_sha))}</td>"
            f'<td class="verdict-{esc(slug(verdict, 30))}">{esc(verdict)}</td>')


def overview_table(site: Site, keys: list[PageKey]) -> str:
    rows = []
    for key in keys:
        group = site.groups[key]
        href = site.names[key]
        for i, s in enumerate(group):
            points = site.points[s.id]
            case = (f'<td rowspan="{len(group)}"><a href="{esc(href)}">'
                    f"{esc(site.case_label(key))}</a><br><code class=\"muted\">{esc(key[1])}"
                    "</code></td>") if i == 0 else ""
            rows.append(f"<tr>{case}"
                        f'<td><a href="{esc(site.series_href(s))}">'
                        f"{esc(metric_name(s.metric))}</a> "
                        f'<span class="muted">{esc(direction_arrow(s.direction))} '
                        f"{esc(direction_words(s.direction))}</span></td>"
                        f'<td class="num">{latest_cell(s, points)}</td>'
                        f"<td>{sparkline(site, s)}</td>"
                        f'<td class="num">{len(points)}</td>'
                        f"{step_cells(s, latest_step(site, s))}</tr>")
    return ('<div class="scroll"><table><thead><tr><th>case</th><th>metric</th><th>latest</th>'
            "<th>trend</th><th>points</th><th>latest step</th><th>verdict</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def sort_keys(site: Site, keys: Iterable[PageKey]) -> list[PageKey]:
    return sorted(keys, key=lambda k: (site.case_label(k), k[1]))


def machine_anchor(machine_id: int | None) -> str:
    return "ratios" if machine_id is None else f"machine-{machine_id}"


def index_page(site: Site) -> str:
    h = site.history
    by_machine: dict[int | None, list[PageKey]] = defaultdict(list)
    for key in site.groups:
        by_machine[key[0]].append(key)
    machine_ids = sorted(m for m in by_machine if m is not None)
    regressions = [s for s in h.steps if s.kind == REGRESSION]
    confirmed = sum(1 for s in regressions if s.verdict == "confirmed")
    subtitle = (f"{plural(len(h.runs), 'run')} on {plural(len(machine_ids), 'machine')}, "
                f"{len(site.series)} series, {plural(len(h.steps), 'step')} "
                f"({plural(len(regressions), 'regression')}, {confirmed} confirmed).")
    nav = [(f"#{machine_anchor(m)}", f"machine {fingerprint(h, m)}") for m in machine_ids]
    if None in by_machine:
        nav.append(("#ratios", "ratios"))
    nav.append((REGRESSIONS, f"regressions ({len(regressions)})"))
    body = ['<p class="caption">Each row is a series: one metric of one case on one machine '
            "(its hardware and the version of the case's framework: a torch case and a JAX "
            "case of one run are on two). "
            "Latest: the newest point on the timeline (a failure shows as its status). Trend: "
            "the whole timeline, red ticks where runs failed. Steps are changes the detector "
            f'found; their verdicts come from measuring both commits again. <a href="'
            f'{REGRESSIONS}">All steps</a>.</p>']
    if not site.groups:
        body.append('<p class="note">The history holds no series yet: add runs with '
                    "<code>attnbench history add</code>.</p>")
    for m in machine_ids:
        runs = [h.runs[i] for i in sorted({p.run_id for key in by_machine[m]
                                           for s in site.groups[key]
                                           for p in site.points[s.id]}) if i in h.runs]
        newest = max(runs, key=lambda r: (r.position if r.position is not None else -math.inf,
                                          r.id), default=None)
        latest = (f" Newest run: {esc(newest.run_id)} at {esc(short_sha(newest.sha))}"
                  + (f" ({esc(newest.committed_at)})" if newest.committed_at else "") + "."
                  ) if newest is not None else ""
        body.append(f'<section id="{machine_anchor(m)}"><h2>Machine '
                    f"{esc(fingerprint(h, m))}</h2><p class=\"caption\">"
                    f"{esc(machine_brief(h.machines.get(m), m))}. "
                    f"{plural(len(runs), 'run')}.{latest}</p>"
                    f"{overview_table(site, sort_keys(site, by_machine[m]))}</section>")
    if None in by_machine:
        body.append('<section id="ratios"><h2>Ratios shared by every machine</h2>'
                    '<p class="caption">Same-run ratios (a suite\'s contracts): measured within '
                    "one run, so every machine's runs share one timeline.</p>"
                    f"{overview_table(site, sort_keys(site, by_machine[None]))}</section>")
    return page(site.title, site.title, subtitle, nav, body)


def fingerprint(history: History, machine_id: int | None) -> str:
    machine = history.machines.get(machine_id) if machine_id is not None else None
    return machine.fingerprint[:12] if machine is not None else f"#{machine_id}"


def points_table(site: Site, series: Series, timeline: Timeline) -> str:
    points = site.points[series.id]
    ratio = series.machine_id is None
    head = ["#", "commit", "committed", "run"] + (["machine"] if ratio else []) + [
        "value", "band (lo \u2013 hi)", "samples", "status", "unstable because", "report"]
    rows = []
    for p in reversed(points):   # newest first
        run = site.history.runs.get(p.run_id)
        commit = short_sha(p.sha) + (" (dirty)" if run is not None and run.dirty else "")
        cells = [f'<td class="num">{timeline.index[p.position] + 1}</td>',
                 f'<td><code title="{esc(p.sha)}">{esc(commit)}</code></td>',
                 f"<td>{esc(run.committed_at if run is not None else '')}</td>",
                 f"<td>{esc(run.run_id if run is not None else f'#{p.run_id}')}</td>"]
        if ratio:
            cells.append(f"<td>{esc(fingerprint(site.history, run.machine_id) if run else '')}"
                         "</td>")
        if is_value(p):
            band = (f"{fmt_value(series.metric, p.lo)} \u2013 {fmt_value(series.metric, p.hi)}"
                    if p.lo is not None or p.hi is not None else "")
            status = esc(p.status)
            css = "unstable" if p.unstable else ""
        else:
            band = ""
            name = p.status if p.status != "ok" else "no value"
            status = f'<span class="status {esc(slug(name, 20))}">{esc(name)}</span>' + (
                f'<br><span class="muted">{esc(compact(p.error, 200))}</span>'
                if p.error else "")
            css = "fail"
        value = fmt_value(series.metric, p.value) if p.value is not None else "-"
        reasons = "; ".join(p.unstable_reasons) if p.unstable else ""
        if p.unstable and not reasons:
            reasons = "unstable (no reason recorded)"
        href = site.link(p.run_id)
        cells += [f'<td class="num">{esc(value)}</td>', f'<td class="num">{esc(band)}</td>',
                  f'<td class="num">{esc(p.samples if p.samples is not None else "")}</td>',
                  f"<td>{status}</td>", f"<td>{esc(reasons)}</td>",
                  f'<td><a href="{esc(href)}">report</a></td>' if href else "<td></td>"]
        rows.append((f'<tr class="{css}">' if css else "<tr>") + "".join(cells) + "</tr>")
    return (f"<details><summary>{plural(len(points), 'point')}, newest first</summary>"
            '<div class="scroll"><table><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></details>")


def series_section(site: Site, series: Series, timeline: Timeline,
                   colours: dict[int | None, str]) -> str:
    points = site.points[series.id]
    ok = sum(1 for p in points if is_value(p))
    unstable = sum(1 for p in points if is_value(p) and p.unstable)
    failures: dict[str, int] = defaultdict(int)
    for p in points:
        if not is_value(p):
            failures[p.status if p.status != "ok" else "no value"] += 1
    counts = [plural(len(points), "point"), f"{ok} measured", f"{unstable} unstable"] + [
        f"{n} {status}" for status, n in sorted(failures.items())]
    steps = site.steps.get(series.id, [])
    step_items = "".join(
        f'<li class="{esc(slug(step.kind, 20))}">{esc(step_caption(series, step))}'
        + (f'<br><span class="muted">evidence: {esc(summarise(step.evidence))}</span>'
           if step.evidence else "") + "</li>" for step in steps)
    band = "the quartiles" if series.metric == "time_median_s" else "the band recorded"
    limit = (" The dark dashed level is the contract's limit as each run's suite had it "
             "(hover a point: met or missed)." if any(
                 finite(p.bound_lo) or finite(p.bound_hi) for p in site.points[series.id])
             else "")
    return (f'<section id="{esc(site.anchors[series.id])}"><h3>{esc(metric_name(series.metric))}'
            f' <span class="muted">({esc(series.metric)}, '
            f"{esc(direction_words(series.direction))})</span></h3>"
            f'<p class="caption">{esc(", ".join(counts))}. Bars: {band} (lo \u2013 hi) of each '
            "point; hollow: unstable (hover for why); a status written on the timeline: a run "
            "that failed there; dashed lines: steps, with their commits and verdicts. Each "
            f"point links to its run's report.{limit}</p>"
            f"{chart(site, series, timeline, colours)}"
            + (f'<ul class="steps">{step_items}</ul>' if steps else
               '<p class="caption">No step found in this series.</p>')
            + points_table(site, series, timeline) + "</section>")


def case_page(site: Site, key: PageKey) -> str:
    h = site.history
    group = site.groups[key]
    machine_id, case_id = key
    points = [p for s in group for p in site.points[s.id]]
    timeline = Timeline.of(points)
    colours: dict[int | None, str] = {}
    if machine_id is None:
        machines = sorted({run.machine_id for p in points
                           if (run := h.runs.get(p.run_id)) is not None},
                          key=lambda m: (m is None, m or 0))
        colours = {m: MACHINE_COLOURS[i % len(MACHINE_COLOURS)] for i, m in enumerate(machines)}
        where = "a ratio shared by every machine"
    else:
        where = (f"machine {fingerprint(h, machine_id)}: "
                 f"{machine_brief(h.machines.get(machine_id), machine_id)}")
    label = site.case_label(key)
    subtitle = (f"{case_id} \u00b7 {where} \u00b7 {plural(len(timeline.slots), 'commit')}")
    nav = [(INDEX, "overview"), (REGRESSIONS, "regressions")] + [
        (f"#{site.anchors[s.id]}", metric_name(s.metric)) for s in group]
    body = []
    if colours:
        legend = " ".join(f'<span style="color:{c}">\u25cf</span> {esc(fingerprint(h, m))} '
                          f"({esc(machine_brief(h.machines.get(m), m))})"
                          for m, c in colours.items())
        body.append(f'<p class="caption">Points by machine: {legend}</p>')
    body += [series_section(site, s, timeline, colours) for s in group]
    return page(f"{label} \u2013 {site.title}", label, subtitle, nav, body)


def regressions_page(site: Site) -> str:
    h = site.history

    def order(step: Step) -> tuple:
        series = h.series.get(step.series_id)
        magnitude = abs(math.log(step.ratio)) if finite(step.ratio) and step.ratio > 0 else 0
        return (step.kind != REGRESSION, step.kind, VERDICT_RANK.get(step.verdict, 4),
                -magnitude, series.label if series else "", step_order(step))

    rows = []
    for step in sorted(h.steps, key=order):
        series = h.series.get(step.series_id)
        if series is None:
            what = f"<td>series #{esc(step.series_id)} (not in the history)</td><td></td>"
            metric = RATIO
        else:
            metric = series.metric
            owner = ("every machine" if series.machine_id is None
                     else fingerprint(h, series.machine_id))
            what = (f'<td><a href="{esc(site.series_href(series))}">{esc(series.label)}</a>'
                    f' \u00b7 {esc(metric_name(metric))} <span class="muted">'
                    f"{esc(direction_arrow(series.direction))}</span></td>"
                    f"<td>{esc(owner)}</td>")
        verdict = verdict_words(step.verdict)
        detail = summarise(step.verdict_detail)
        rows.append(f'<tr class="{esc(slug(step.kind, 20))}">'
                    f'<td class="kind">{esc(step.kind)}</td>{what}'
                    f"<td><code>{esc(short_sha(step.before_sha))}</code> \u2192 "
                    f"<code>{esc(short_sha(step.after_sha))}</code></td>"
                    f'<td class="num">{esc(fmt_value(metric, step.before_value))} \u2192 '
                    f"{esc(fmt_value(metric, step.after_value))}</td>"
                    f'<td class="num">{esc(fmt_ratio(step.ratio))}</td>'
                    f"<td>{esc(summarise(step.evidence))}</td>"
                    f'<td class="verdict-{esc(slug(verdict, 30))}">{esc(verdict)}'
                    + (f'<br><span class="muted">{esc(detail)}</span>' if detail else "")
                    + "</td></tr>")
    n_reg = sum(1 for s in h.steps if s.kind == REGRESSION)
    subtitle = (f"{plural(len(h.steps), 'step')}: {plural(n_reg, 'regression')}, "
                f"{plural(len(h.steps) - n_reg, 'improvement')}. Regressions first; within "
                "each, confirmed first, then the largest change.")
    if rows:
        body = ['<div class="scroll"><table><thead><tr><th>kind</th><th>series</th>'
                "<th>machine</th><th>commits (last before \u2192 first after)</th>"
                "<th>before \u2192 after</th><th>ratio</th><th>evidence</th><th>verdict</th>"
                f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"]
    else:
        body = ['<p class="note">No step found in any series.</p>']
    return page(f"Regressions \u2013 {site.title}", "Steps and regressions", subtitle,
                [(INDEX, "overview")], body)


# --------------------------------------------------------------------------------------------
# Writing: only what changed
# --------------------------------------------------------------------------------------------


def same_bytes(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file holding exactly ``data``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
        return False
    try:
        return read_bytes(path, len(data) + 1, "page") == data
    except (OSError, UnsafePathError):
        return False


def previous_pages(out: Path) -> list[str]:
    """The case pages an earlier publish listed in site.json (names checked: nothing else
    can ever be removed, whatever the file says)."""
    try:
        data = json.loads(read_bytes(out / MANIFEST, 16 << 20, "site manifest"))
    except (OSError, UnsafePathError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return []
    pages = data.get("pages")
    if not isinstance(pages, list):
        return []
    return sorted({p for p in pages if isinstance(p, str) and CASE_PAGE.fullmatch(p)})


def manifest_bytes(pages: Iterable[str]) -> bytes:
    return (json.dumps({"format": MANIFEST_FORMAT, "version": 1, "pages": sorted(set(pages))},
                       indent=1) + "\n").encode()


def publish(history: History, out_dir: str | Path, *, title: str = "attnbench history",
            report_url: Callable[[Run], str | None] | None = None) -> PublishResult:
    """Write the site into ``out_dir`` (created if missing); only files whose bytes differ
    are written, each atomically. A case page of an earlier publish (listed in ``site.json``)
    whose case is gone is removed; no other file in ``out_dir`` is touched."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    site = Site(history, title, report_url or default_report_url(out))
    pages: dict[str, str] = {site.names[key]: case_page(site, key) for key in site.groups}
    case_names = sorted(pages)
    pages[REGRESSIONS] = regressions_page(site)
    pages[INDEX] = index_page(site)

    result = PublishResult()
    old = previous_pages(out)
    manifest_path = out / MANIFEST
    final_manifest = manifest_bytes(case_names)
    manifest_was_final = same_bytes(manifest_path, final_manifest)
    manifest_now = final_manifest if manifest_was_final else None
    if not set(case_names) <= set(old) and not manifest_was_final:
        # list the new pages before writing them, so that a publish killed midway leaves
        # none that a later publish would not know to remove
        manifest_now = manifest_bytes([*old, *case_names])
        write_atomic(manifest_path, manifest_now)
    for name in [*case_names, REGRESSIONS, INDEX]:   # the overview last: its links exist
        path, data = out / name, pages[name].encode("utf-8", errors="backslashreplace")
        if same_bytes(path, data):
            result.unchanged.append(path)
        else:
            write_atomic(path, data)
            result.written.append(path)
    for name in sorted(set(old) - set(case_names)):
        path = out / name
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()
                result.removed.append(path)
        except FileNotFoundError:
            pass
    if manifest_was_final:
        result.unchanged.append(manifest_path)
    else:
        if manifest_now != final_manifest:
            write_atomic(manifest_path, final_manifest)
        result.written.append(manifest_path)
    return result
