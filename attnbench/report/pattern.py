"""The attention-pattern figure, in the spirit of the Reformer paper's Figure 2.

Computed from the NumPy float64 reference, independent of any run: one small input whose
vectors come from a few clusters (so hashing has structure to find), the exact shared-QK
attention matrix beside the matrix LSH attention computes, first in the original order of the
positions and then sorted by bucket, where the attended positions fall into the chunk blocks
along the diagonal. Passing the identity as ``v`` makes each attention's output its matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench import reference


@dataclass(frozen=True)
class PatternSettings:
    length: int = 64
    d_head: int = 16
    n_buckets: int = 8
    chunk_len: int = 8
    n_clusters: int = 6
    scale: float = 3.0  # larger vectors: sharper attention, as a trained model's
    seed: int = 0


def attention_patterns(s: PatternSettings = PatternSettings()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(s.seed)
    centers = rng.standard_normal((s.n_clusters, s.d_head))
    members = rng.integers(0, s.n_clusters, s.length)
    noise = 0.35 * rng.standard_normal((s.length, s.d_head))
    qk = (s.scale * (centers[members] + noise))[None, None]  # (B=1, H=1, L, d)
    identity = np.eye(s.length)[None, None]
    rotations = rng.standard_normal((1, s.d_head, 1, s.n_buckets // 2))
    exact = reference.shared_qk_attention(qk, identity, causal=False)[0, 0]
    lsh = reference.lsh_attention(qk, identity, rotations=rotations, n_buckets=s.n_buckets,
                                  chunk_len=s.chunk_len, causal=False)[0, 0]
    buckets = reference.hash_buckets(qk, rotations)[0, 0, 0]
    order = np.argsort(buckets, kind="stable")
    recall = float((exact * (lsh > 0)).sum() / exact.sum())
    return {"exact": exact, "lsh": lsh, "buckets": buckets, "order": order, "recall": recall}


def attention_pattern_figure(s: PatternSettings = PatternSettings()):
    from attnbench.report.figures import _pyplot

    plt = _pyplot()
    p = attention_patterns(s)
    order = p["order"]
    panels = [
        ("exact shared-QK attention", p["exact"]),
        ("LSH attention (1 round)", p["lsh"]),
        ("exact, sorted by bucket", p["exact"][np.ix_(order, order)]),
        ("LSH, sorted by bucket", p["lsh"][np.ix_(order, order)]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    vmax = max(float(m.max()) for _, m in panels)
    for i, (ax, (title, matrix)) in enumerate(zip(axes, panels, strict=True)):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key position" + (" (sorted)" if i >= 2 else ""))
        ax.set_ylabel("query position" + (" (sorted)" if i >= 2 else ""))
        if i >= 2:
            for edge in range(s.chunk_len, s.length, s.chunk_len):
                ax.axhline(edge - 0.5, color="orange", linewidth=0.5)
                ax.axvline(edge - 0.5, color="orange", linewidth=0.5)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention weight (-)")
    return fig, CAPTION.format(recall=p["recall"], **s.__dict__)


CAPTION = ("One input of {length} positions (vectors drawn around {n_clusters} centres), "
           "{n_buckets} buckets, chunks of {chunk_len} (orange lines), computed with the NumPy "
           "float64 reference. LSH attends only within a position's chunk and the one before, "
           "so once sorted by bucket its weights sit in blocks along the diagonal; those blocks "
           "hold {recall:.0%} of the exact attention's mass (more rounds hold more).")
