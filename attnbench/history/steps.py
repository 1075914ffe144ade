"""Steps in one series: where its level changed, by how much, and on what evidence.

Method
------
A piecewise-constant fit, the penalised (Potts) problem asv solves, made exact and weighted:

1. **Numbers only.** Points whose status is not ``ok``, or whose value is missing or not finite,
   are not numbers and are left out (never zeros); a step across them names the numeric points
   on either side and lists the failures in between in its evidence.
2. **Log space.** A series of positive values is fitted on ``log(value)``, so relative noise is
   constant noise and a 10% slowdown is the same size at 1 ms and at 1 s. A series with a zero
   or negative value (an accuracy of 0, say) is fitted on its values, scaled by their median
   magnitude.
3. **Weights from each point's own band.** A point's band (``lo``/``hi``, the quartiles of its
   repeats) divided by its value and by ``sqrt(samples)`` is the standard error of its median,
   up to a constant: ``se``. Its variance is taken as ``se**2 + se_ref**2``, ``se_ref`` the
   series' median ``se``: the second term is the run-to-run noise a point's own repeats cannot
   see (another process, another boot, a clock). Weight = inverse variance, normalised so a
   median point weighs 1: a band narrower than the median weighs at most 2 (a lucky narrow
   band cannot outvote its neighbours), a band 3x the median weighs 0.2, and no point weighs
   less than 0.02. **Unknown band: weight 1** (the median). **Unstable** (``Point.unstable``)
   multiplies the weight by ``UNSTABLE_WEIGHT`` = 0.1: weak evidence, a tenth of a point.
4. **Noise scale from the data.** The weights say which points are better, not how noisy the
   series is: the scale ``s`` (log units, so ~ relative noise of a weight-1 point) is the RMS
   of the weight-standardised first differences, leaving out those beyond 4 MAD-sigmas (the
   few a step or a spike makes). The MAD alone was measured to be too small (weights estimated
   from 7 repeats make the standardised differences heavy-tailed): it tripled the false alarms
   (18% against 6% of flat histories at threshold 0, penalty 3). Floor: 1e-4, so a
   deterministic series (a memory peak) does not divide by zero; there the threshold decides.
5. **Robust to spikes.** A point that none of its four nearest neighbours (two before, two
   after) agrees with, ``r`` = its distance to the nearest one in its own standard deviations
   above 3, is down-weighted to ``(3 / r)**2``: its squared residual then counts as a 3-sigma
   point's, so one slow run cannot pay for a step (a convex loss, Huber's included, would let
   a big enough spike do so); a point on either side of a real step agrees with its neighbours
   on that side and keeps its weight.
6. **Fit.** Minimise ``sum(w_i * (y_i - level)**2) / s**2 + beta * (number of steps)`` over all
   segmentations by optimal partitioning (an exact dynamic programme: n numpy steps of at most
   n candidates each, so 1,000 points take a fraction of a second), with
   ``beta = penalty * ln(n)`` (BIC-like; ``penalty`` = 4, measured). A step can only
   fall between two different commits (repeated runs of one commit, the same sha or position,
   are evidence for one level), and a segment holds at least ``min_size`` = 2 points (a single
   run is not a level: a regression in the newest commit shows once it has two runs, or its
   next commit has one). Binary segmentation with the same weighted test is available
   (``method="binseg"``) and measured.
7. **Merges.** Steps are then merged away one at a time, refitting the levels after each:
   first the smallest step whose relative size ``|after/before - 1|`` is below ``threshold``;
   then an **excursion**, a peak or a trough of at most ``max_excursion`` = 2 commits between
   two other levels, into its nearer neighbour (asv drops a short segment whose level
   returns, its PR #881: two slow runs in a row are a bad hour more often than a regression
   fixed two commits later; a short segment at the end of the series, the newest commits, is
   no excursion and is reported); last, a step whose gain fell below ``beta`` once its
   neighbours were merged. Each step left is a regression or an improvement by the series'
   direction.

Measured
--------
``python benchmarks/step_detection.py --out FILE`` (200 histories per cell, seed 23): 60 runs,
one step of 5/10/30% (a rise or a fall) at a random commit 3..57; a run is the median of 7
simulated repeats and its band their quartiles; half the noise (in variance) is between runs,
where bands cannot see it; 10% of runs unstable with 3x the noise, 3% failed. Found = reported
within +-2 commits with the right kind. False alarm = any step in a flat history (60 runs of
one commit's code, each at its own place on the timeline). At the defaults (opt, penalty 4,
threshold 0.03):

==============================  ========  =========  =========
recall                          5% step   10% step   30% step
==============================  ========  =========  =========
1% noise                        100%      100%       100%
2% noise                        90%       100%       99.5%
5% noise                        23.5%     83%        100%
==============================  ========  =========  =========

False alarms: 0% (1% noise), 1.0% (2%), 0.5% (5%); 0% for 20 commits run 3 times each; 12%
when 5% of runs are slowed by 10-50% without the unstable mark (two such spikes two commits
apart agree with each other). A regression undone 3-15 commits later, both steps found: 96.5%
(10% step, 2% noise), 65% (5%, 2%), 40% (10%, 5%).

- **Penalty 4** is the smallest with no more than 1% false alarms at every noise level:
  penalty 3 gives 5.5% and 4.5% at 2% and 5% noise, 3.5 gives 3.5% and 2.0%; what 4 costs is
  recall where the step is the size of the noise (5% step under 5% noise: 23.5%, against 33%
  at penalty 3).
- **Threshold 0.03**: at penalty 4 the threshold only matters under low noise. 0.03 keeps
  every 5% step under 1% noise (100%; 99.5% at 0.04, 53% at 0.05: a 5% step is estimated
  below 5% half the time, so asv's 5% default misses half of them) and brings the false alarms
  at 2% noise from 2.5% (threshold 0) and 1.5% (0.02) to 1.0%.
- **Choices, measured at the defaults** (a change from the defaults, its effect): no band
  weights, recall of a 5% step under 5% noise 15.5% (23.5%), of a 10% one 77% (83%), of a
  regression undone later 20% (40%), for the same false alarms; unstable runs at full weight,
  15.5%, 82%, 26%; no spike check, 45% false alarms with spikes (12%); no excursion rule, 23%
  (12%); excursions up to 3 commits, a 10% regression undone later found 89% (96.5%);
  binary segmentation, as good on one step but 41/77.5/16.5% (65/96.5/40%) on a regression
  undone later, its known blind spot.
- Limits: a step's place is uncertain when the step is near the noise (5% under 2% noise,
  a spot check of 200: 7.5% reported 3+ commits off, counted as missed, 4% not reported at
  all); a change at the newest commit needs two
  runs; real noise can be more correlated than this model (asv fits an AR(1) term; here a run
  of bad hours looks like a step, which ``attnbench history confirm`` is for).

References: asv ``step_detect.py`` (weighted L1 Potts fit, 5% default threshold), conbench's
lookback z-score, PyTorch HUD's ">= 2 consecutive points" rule; see
``/work/shared/reference/history-and-regressions.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnbench.history.model import HIGHER, IMPROVEMENT, LOWER, REGRESSION, Point, Step

DEFAULT_THRESHOLD = 0.03    # the relative step size below which nothing is reported (measured)
DEFAULT_PENALTY = 4.0       # beta = penalty * ln(n), in units of the noise variance (measured)
DEFAULT_MIN_SIZE = 2        # points in a segment, at least (HUD: >= 2 consecutive)
DEFAULT_MAX_EXCURSION = 2   # commits: a shorter peak or trough between two levels is no step
UNSTABLE_WEIGHT = 0.1       # an unstable point's weight, relative to a stable one like it
HUBER_C = 3.0               # the standardised distance beyond which a point is down-weighted
MAX_BAND_WEIGHT = 2.0       # the weight of a point with no spread of its own (see 3. above)
MIN_BAND_WEIGHT = 0.02
NOISE_FLOOR = 1e-4          # the smallest noise scale (relative)
METHODS = ("opt", "binseg")


def detect_steps(points: Sequence[Point], direction: str, *,
                 threshold: float = DEFAULT_THRESHOLD, penalty: float = DEFAULT_PENALTY,
                 min_size: int = DEFAULT_MIN_SIZE, method: str = "opt",
                 unstable_weight: float = UNSTABLE_WEIGHT, band_weights: bool = True,
                 robust: bool = True, max_excursion: int = DEFAULT_MAX_EXCURSION) -> list[Step]:
    """The steps of one series, oldest first.

    ``points`` are one series' points in timeline order (they are re-sorted by position,
    stably); ``direction`` is LOWER or HIGHER (which is better). ``threshold`` is the relative
    step size below which nothing is reported; ``penalty`` scales the cost of a step
    (``beta = penalty * ln(n)`` noise variances); ``min_size`` is the fewest points a level
    rests on; a peak or trough of at most ``max_excursion`` commits between two other levels
    is not reported (0: it is). ``method``, ``unstable_weight``, ``band_weights`` and
    ``robust`` exist to measure the choices (``benchmarks/step_detection.py``); the defaults
    are the measured ones.
    """
    if direction not in (LOWER, HIGHER):
        raise ValueError(f"direction must be {LOWER!r} or {HIGHER!r}, not {direction!r}")
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, not {threshold!r}")
    if not (math.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"penalty must be a finite number >= 0, not {penalty!r}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, not {min_size!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if max_excursion < 0:
        raise ValueError(f"max_excursion must be >= 0, not {max_excursion!r}")
    if not 0 < unstable_weight <= 1:
        raise ValueError(f"unstable_weight must be in (0, 1], not {unstable_weight!r}")
    if not points:
        return []
    series_ids = {p.series_id for p in points}
    if len(series_ids) > 1:
        raise ValueError(f"points of several series: {sorted(series_ids)}")
    series_id = points[0].series_id

    timeline = sorted(points, key=lambda p: p.position)
    pts = [p for p in timeline if _is_number(p)]
    n = len(pts)
    if n < 2 * min_size:
        return []
    values = np.array([float(p.value) for p in pts])
    space = "log" if bool(np.all(values > 0)) else "linear"
    if space == "log":
        center = float(np.median(np.log(values)))
        y = np.log(values) - center
        scale = 1.0
    else:
        center = float(np.median(values))
        scale = float(np.median(np.abs(values))) or float(np.max(np.abs(values))) or 1.0
        y = (values - center) / scale

    w = _band_weights(pts, space, scale) if band_weights else np.ones(n)
    unstable = np.array([bool(p.unstable) for p in pts])
    w = np.where(unstable, w * unstable_weight, w)
    s = _noise_scale(y, w)
    h = _huber(y, w, s) if robust else np.ones(n)
    prec = w * h / (s * s)

    # a boundary t lies between pts[t-1] and pts[t]; it may hold a step only between commits
    allowed = np.ones(n + 1, dtype=bool)
    for t in range(1, n):
        a, b = pts[t - 1], pts[t]
        if a.position == b.position or (a.sha is not None and a.sha == b.sha):
            allowed[t] = False
    beta = penalty * math.log(n)
    segment = _segment_opt if method == "opt" else _segment_binseg
    bounds = segment(y, prec, allowed, min_size, beta)
    commit = np.concatenate([[0], np.cumsum(allowed[1:n])])   # each point's commit number
    bounds = _prune(bounds, y, prec, commit, threshold, beta, max_excursion, space, center,
                    scale)

    def level(a: int, b: int) -> float:
        m = float(np.sum(prec[a:b] * y[a:b]) / np.sum(prec[a:b]))
        return math.exp(m + center) if space == "log" else m * scale + center

    edges = [0, *bounds, n]
    steps = []
    for i, t in enumerate(bounds):
        a, b = edges[i], edges[i + 2]
        before, after = level(a, t), level(t, b)
        ratio = after / before if before != 0 else (math.inf if after > 0 else -math.inf)
        rises = after > before
        kind = REGRESSION if rises == (direction == LOWER) else IMPROVEMENT
        w1, w2 = float(np.sum(prec[a:t])), float(np.sum(prec[t:b]))
        m1 = float(np.sum(prec[a:t] * y[a:t]) / w1)
        m2 = float(np.sum(prec[t:b] * y[t:b]) / w2)
        z = (m2 - m1) / math.sqrt(1 / w1 + 1 / w2)
        p_before, p_after = pts[t - 1], pts[t]
        failed = [{"sha": p.sha, "status": p.status} for p in timeline
                  if not _is_number(p) and p_before.position < p.position < p_after.position]
        evidence: dict[str, Any] = {
            "method": method,
            "space": space,
            "before_points": t - a,
            "after_points": b - t,
            "before_commits": _commits(pts[a:t]),
            "after_commits": _commits(pts[t:b]),
            "before_first_sha": pts[a].sha,
            "after_last_sha": pts[b - 1].sha,
            "before_level": before,
            "after_level": after,
            "change": (ratio - 1) if math.isfinite(ratio) else None,
            "noise": s * (1 if space == "log" else scale),
            "z": z,
            "p_value": math.erfc(abs(z) / math.sqrt(2)),   # nominal: one split, not the search
            "penalty": beta,
            "threshold": threshold,
            "unstable_before": int(np.sum(unstable[a:t])),
            "unstable_after": int(np.sum(unstable[t:b])),
            "downweighted": int(np.sum(h[a:b] < 1)),
            "failed_between": failed,
        }
        steps.append(Step(series_id=series_id, before_sha=p_before.sha, after_sha=p_after.sha,
                          before_value=before, after_value=after, ratio=ratio, kind=kind,
                          evidence=evidence))
    return steps


def point_weights(points: Sequence[Point], *, unstable_weight: float = UNSTABLE_WEIGHT,
                  ) -> list[float | None]:
    """Each point's relative weight as the fit uses it before the spike check (None for a
    point that is not a number): its band's, times ``unstable_weight`` if unstable."""
    nums = [p for p in points if _is_number(p)]
    if not nums:
        return [None] * len(points)
    values = np.array([float(p.value) for p in nums])
    space = "log" if bool(np.all(values > 0)) else "linear"
    scale = 1.0 if space == "log" else (float(np.median(np.abs(values)))
                                        or float(np.max(np.abs(values))) or 1.0)
    w = _band_weights(nums, space, scale)
    w = np.where([p.unstable for p in nums], w * unstable_weight, w)
    it = iter(w.tolist())
    return [next(it) if _is_number(p) else None for p in points]


def _is_number(p: Point) -> bool:
    return (p.status == "ok" and p.value is not None and isinstance(p.value, int | float)
            and math.isfinite(p.value))


def _commits(pts: Sequence[Point]) -> int:
    return len({p.sha if p.sha is not None else ("position", p.position) for p in pts})


def _band_weights(pts: Sequence[Point], space: str, scale: float) -> np.ndarray:
    """Inverse-variance weights from the bands, normalised to the median point (see 3.)."""
    n = len(pts)
    known_samples = [p.samples for p in pts if p.samples and p.samples > 0]
    k_default = float(np.median(known_samples)) if known_samples else 1.0
    se = np.full(n, np.nan)
    for i, p in enumerate(pts):
        if p.lo is None or p.hi is None:
            continue
        lo, hi = float(p.lo), float(p.hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        width = abs(hi - lo) / (abs(float(p.value)) if space == "log" else scale)
        k = float(p.samples) if p.samples and p.samples > 0 else k_default
        se[i] = width / math.sqrt(k)
    known = ~np.isnan(se)
    w = np.ones(n)
    if not known.any():
        return w
    ref = float(np.median(se[known]))
    if ref == 0:
        positive = se[known][se[known] > 0]
        if positive.size == 0:
            return w
        ref = float(positive.min()) * 1e-3
    var = se[known] ** 2 + ref * ref
    w[known] = np.clip(2 * ref * ref / var, MIN_BAND_WEIGHT, MAX_BAND_WEIGHT)
    return w


def _noise_scale(y: np.ndarray, w: np.ndarray) -> float:
    """The noise of a weight-1 point (see 4.): RMS of the weight-standardised first
    differences within 4 MAD-sigmas (steps and spikes left out)."""
    if y.size < 2:
        return NOISE_FLOOR
    u = np.diff(y) / np.sqrt(1 / w[:-1] + 1 / w[1:])
    mad = max(float(np.median(np.abs(u))) / 0.6745, NOISE_FLOOR)
    kept = u[np.abs(u) <= 4 * mad]
    return max(float(np.sqrt(np.mean(kept * kept))), NOISE_FLOOR)


def _huber(y: np.ndarray, w: np.ndarray, s: float) -> np.ndarray:
    """Down-weighting factors for spikes: points no neighbour agrees with (see 5.)."""
    n = y.size
    dist = np.full(n, np.inf)
    for k in (1, 2):
        if n > k:
            d = np.abs(y[k:] - y[:-k])
            dist[k:] = np.minimum(dist[k:], d)
            dist[:-k] = np.minimum(dist[:-k], d)
    r = np.where(np.isfinite(dist), dist, 0.0) * np.sqrt(w) / s
    with np.errstate(divide="ignore", over="ignore"):
        return np.minimum(1.0, (HUBER_C / r) ** 2)


def _cumsums(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    z = np.zeros(1)
    return (np.concatenate([z, np.cumsum(p)]), np.concatenate([z, np.cumsum(p * y)]),
            np.concatenate([z, np.cumsum(p * y * y)]))


def _cost(sums: tuple[np.ndarray, ...], a: Any, b: Any) -> Any:
    """The weighted sum of squares about the weighted mean of y[a:b] (vectorised)."""
    s0, s1, s2 = sums
    w = s0[b] - s0[a]
    m = s1[b] - s1[a]
    return (s2[b] - s2[a]) - m * m / w


def _segment_opt(y: np.ndarray, p: np.ndarray, allowed: np.ndarray, min_size: int,
                 beta: float) -> list[int]:
    """Optimal partitioning: the exact minimum of cost + beta * steps."""
    n = y.size
    sums = _cumsums(y, p)
    best = np.full(n + 1, np.inf)
    best[0] = -beta
    last = np.zeros(n + 1, dtype=int)
    starts = np.flatnonzero(allowed[:n])           # 0 and every allowed boundary
    for t in np.flatnonzero(allowed[1:]) + 1:
        c = starts[starts <= t - min_size]
        c = c[np.isfinite(best[c])]
        if c.size == 0:
            continue
        total = best[c] + _cost(sums, c, t) + beta
        j = int(np.argmin(total))
        best[t], last[t] = total[j], c[j]
    if not np.isfinite(best[n]):
        return []
    bounds, t = [], n
    while t > 0:
        t = int(last[t])
        if t > 0:
            bounds.append(t)
    return sorted(bounds)


def _segment_binseg(y: np.ndarray, p: np.ndarray, allowed: np.ndarray, min_size: int,
                    beta: float) -> list[int]:
    """Binary segmentation: split where the weighted two-sample gain is largest, while it
    exceeds beta."""
    sums = _cumsums(y, p)
    bounds, todo = [], [(0, y.size)]
    while todo:
        a, b = todo.pop()
        ks = np.arange(a + min_size, b - min_size + 1)
        ks = ks[allowed[ks]]
        if ks.size == 0:
            continue
        gain = _cost(sums, a, b) - _cost(sums, a, ks) - _cost(sums, ks, b)
        j = int(np.argmax(gain))
        if gain[j] > beta:
            k = int(ks[j])
            bounds.append(k)
            todo += [(a, k), (k, b)]
    return sorted(bounds)


def _prune(bounds: list[int], y: np.ndarray, p: np.ndarray, commit: np.ndarray,
           threshold: float, beta: float, max_excursion: int, space: str, center: float,
           scale: float) -> list[int]:
    """Merge steps away, one at a time, until none is left to merge (see 7.): the smallest
    below the threshold first; then an excursion (a peak or a trough of at most
    ``max_excursion`` commits between two other levels) into its nearer neighbour; then the
    least significant whose gain, once its neighbours were merged, fell below beta."""
    n = y.size
    sums = _cumsums(y, p)
    bounds = list(bounds)
    while bounds:
        edges = np.array([0, *bounds, n])
        m = (sums[1][edges[1:]] - sums[1][edges[:-1]]) / (sums[0][edges[1:]] - sums[0][edges[:-1]])
        if space == "log":
            sizes = np.abs(np.expm1(np.diff(m)))
        else:   # linear: relative to the level before
            lv = m * scale + center
            d = np.abs(np.diff(lv))
            with np.errstate(divide="ignore", invalid="ignore"):
                sizes = np.where(lv[:-1] != 0, d / np.abs(lv[:-1]), np.where(d > 0, np.inf, 0.0))
        j = int(np.argmin(sizes))
        if sizes[j] < threshold:
            del bounds[j]
            continue
        dm = np.diff(m)
        excursions = [k for k in range(1, len(bounds))
                      if dm[k - 1] * dm[k] < 0
                      and commit[edges[k + 1] - 1] - commit[edges[k]] < max_excursion]
        if excursions:
            k = min(excursions, key=lambda k: min(sizes[k - 1], sizes[k]))
            del bounds[k - 1 if sizes[k - 1] <= sizes[k] else k]
            continue
        gain = (_cost(sums, edges[:-2], edges[2:]) - _cost(sums, edges[:-2], edges[1:-1])
                - _cost(sums, edges[1:-1], edges[2:]))
        j = int(np.argmin(gain))
        if gain[j] < beta:
            del bounds[j]
            continue
        break
    return bounds
