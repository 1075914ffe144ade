"""The figures a GPU run is judged by, from a gpu-check run directory, as Markdown.

    python benchmarks/gpu_summary.py reports/runs/gpu-check/run

For each framework: LSH fwd+bwd time against full attention's at each length and dtype (the
issue's targets: LSH-4 in bfloat16 at most 0.5x FlashAttention at 16K and 0.1x at 64K), torch
against JAX per kernel, the fused kernel against the portable core, and the longest 12-layer
Reformer training step that ran, its peak memory beside the analytic estimate. Rows that did
not run say their status; nothing is left out silently.
"""

from __future__ import annotations

import sys

from attnbench.runs import load_source


def _time(row):
    if row is None:
        return None, "missing"
    if row["status"] != "ok":
        return None, row["status"]
    return row["metrics"]["time_median_s"], "ok"


def _find(rows, **fields):
    hits = [r for r in rows if all(r["case"].get(k) == v for k, v in fields.items())]
    return hits[0] if hits else None


def _fmt(seconds, status):
    return f"{seconds * 1e3:.2f} ms" if seconds is not None else status


def main(run_dir: str) -> int:
    rows = load_source(run_dir).rows
    lines = [f"# gpu-check summary: {run_dir}", ""]
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += [f"{len(rows)} cases: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
              ""]
    lines += ["## LSH fwd+bwd against full attention (ratio = LSH / full, same run)", "",
              "| framework | dtype | length | full | LSH-1 | LSH-2 | LSH-4 | LSH-8 | kernel |",
              "|---|---|---|---|---|---|---|---|---|"]
    for fw in ("torch", "jax"):
        for dtype in ("bfloat16", "float32"):
            for length in (4096, 16384, 65536, 131072):
                full = _time(_find(rows, variant="full-fused", framework=fw, dtype=dtype,
                                   length=length, mode="forward-backward"))
                cells = []
                kernel = "-"
                for h in (1, 2, 4, 8):
                    row = _find(rows, variant="lsh", framework=fw, dtype=dtype, length=length,
                                n_hashes=h, kernel="auto", mode="forward-backward")
                    t, status = _time(row)
                    if row is not None and h == 4 and row["status"] == "ok":
                        kernel = row["metrics"].get("kernel") or "-"
                    ratio = f" ({t / full[0]:.3f}x)" if t is not None and full[0] else ""
                    cells.append(_fmt(t, status) + ratio if row is not None else "-")
                if all(c == "-" for c in cells) and full[1] == "missing":
                    continue
                lines.append(f"| {fw} | {dtype} | {length} | {_fmt(*full)} | "
                             + " | ".join(cells) + f" | {kernel} |")
    lines += ["", "## torch / JAX and fused / portable, LSH-4 bfloat16", "",
              "| length | torch fused | JAX fused | torch/JAX | torch portable | JAX portable |",
              "|---|---|---|---|---|---|"]
    for length in (4096, 16384, 65536, 131072):
        tf, jf, tp, jp = (_time(_find(rows, variant="lsh", framework=fw, dtype="bfloat16",
                                      length=length, n_hashes=4, kernel=kernel))
                          for fw, kernel in (("torch", "auto"), ("jax", "auto"),
                                             ("torch", "portable"), ("jax", "portable")))
        ratio = f"{tf[0] / jf[0]:.2f}" if tf[0] and jf[0] else "-"
        lines.append(f"| {length} | {_fmt(*tf)} | {_fmt(*jf)} | {ratio} | {_fmt(*tp)} | "
                     f"{_fmt(*jp)} |")
    lines += ["", "## 12-layer Reformer training step (bfloat16)", "",
              "| framework | length | status | time | peak MiB | analytic MiB |",
              "|---|---|---|---|---|---|"]
    for fw in ("torch", "jax"):
        for length in (65536, 262144, 1048576):
            row = _find(rows, variant="reformer", framework=fw, depth=12, length=length)
            if row is None:
                continue
            m = row["metrics"]
            t, status = _time(row)
            peak, analytic = m.get("mem_peak_mb"), m.get("mem_analytic_mb")
            lines.append(f"| {fw} | {length} | {status} | {_fmt(t, status)} | "
                         f"{peak if peak is None else round(peak)} | "
                         f"{analytic if analytic is None else round(analytic)} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
