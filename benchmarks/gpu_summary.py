"""The figures a GPU run is judged by, from a gpu-check run directory, as Markdown.

    python benchmarks/gpu_summary.py reports/runs/gpu-check/run
    python benchmarks/gpu_summary.py --headline reports/runs/gpu-check/run \
        [--kernel-check DIR/a-headline/kernel_check_torch.json ...]

``--headline``: the cases of suites/gpu-headline.toml only (LSH-1 and LSH-4 against
FlashAttention / cuDNN, bfloat16 fwd+bwd at 16K and 64K, each with its ratio and the issue's
target for LSH-4), each headline case's status (a case not run yet says so), and the fused
kernels' CUDA check against the portable core (benchmarks/gpu_kernel_check.py's JSON files).

Without it, for each framework: LSH fwd+bwd time against full attention's at each length and
dtype (the issue's targets: LSH-4 in bfloat16 at most 0.5x FlashAttention at 16K and 0.1x at
64K), torch against JAX per kernel, the fused kernel against the portable core, and the
longest 12-layer Reformer training step that ran, its peak memory beside the analytic
estimate. Rows that did not run say their status; nothing is left out silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnbench.runs import load_source

HEADLINE_SUITE = Path(__file__).resolve().parents[1] / "suites" / "gpu-headline.toml"
# The targets: LSH-4 fwd+bwd in bfloat16 at most this many times full attention's.
TARGETS = {16384: 0.5, 65536: 0.1}


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


def _ratio(t, full):
    return f" ({t / full:.3f}x)" if t is not None and full else ""


def headline(run_dir: str, kernel_checks: list[str]) -> int:
    """The headline: gpu-headline's cases in ``run_dir`` and the kernel checks. Exit status 0
    (what did not run is said in the table, not by the exit status)."""
    from attnbench.runner.suite import load_suite

    suite = load_suite(HEADLINE_SUITE)
    try:
        by_id = {r["case_id"]: r for r in load_source(run_dir).rows}
    except Exception as exc:  # noqa: BLE001  no run yet: the headline says so
        by_id, missing = {}, f"{type(exc).__name__}: {exc}"
    else:
        missing = None
    rows = [by_id.get(c.case_id) for c in suite.cases]
    lines = [f"# gpu-check headline: {run_dir}", ""]
    if missing:
        lines += [f"no run to read: {missing}", ""]
    counts = {}
    for r in rows:
        status = "not run" if r is None else r["status"]
        counts[status] = counts.get(status, 0) + 1
    lines += [f"{len(rows)} headline cases: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]
    lines += ["## LSH fwd+bwd against full attention, bfloat16 (ratio = LSH / full, same run)",
              "", "| framework | length | full (kernel) | LSH-1 | LSH-4 | LSH-4 target | "
              "met | LSH kernel |", "|---|---|---|---|---|---|---|---|"]
    present = [r for r in rows if r is not None]
    for fw in ("torch", "jax"):
        for length in sorted({c.length for c in suite.cases}):
            full_row = _find(present, variant="full-fused", framework=fw, length=length)
            full = _time(full_row)
            fk = (full_row or {}).get("metrics", {}).get("full_attention_kernel") or "-"
            cells, kernel, t4 = [], "-", None
            for h in (1, 4):
                row = _find(present, variant="lsh", framework=fw, length=length, n_hashes=h)
                t, status = _time(row)
                if row is None:
                    status = "not run"
                if h == 4:
                    t4 = t
                    if row is not None and row["status"] == "ok":
                        kernel = row["metrics"].get("kernel") or "-"
                cells.append(_fmt(t, status) + _ratio(t, full[0]))
            target = TARGETS.get(length)
            met = "-"
            if target is not None and t4 is not None and full[0]:
                met = "yes" if t4 / full[0] <= target else "NO"
            full_cell = _fmt(*full) if full_row is not None else "not run"
            lines.append(f"| {fw} | {length} | {full_cell} ({fk}) | {cells[0]} | {cells[1]} | "
                         f"{'-' if target is None else f'<= {target}x'} | {met} | {kernel} |")
    lines += ["", "## Fused kernels against the portable core on CUDA "
              "(benchmarks/gpu_kernel_check.py)", ""]
    if not kernel_checks:
        lines.append("no kernel check given")
    for path in kernel_checks:
        lines += _kernel_check_lines(path)
    print("\n".join(lines))
    return 0


def _kernel_check_lines(path: str) -> list[str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"- {path}: no result ({exc.__class__.__name__}: {exc}); the check did not "
                "finish (see its log)", ""]
    lines = [f"{path}: {'all passed' if data.get('ok') else 'MISMATCH or ERROR'}", "",
             "| framework | kernel | shape | dtype | causal | out | d_qk | d_v | tolerance | ok |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, dict] = {}
    for r in data.get("rows", []):
        key = (r["framework"], r["fused_kernel"], r["name"], r["dtype"], r["causal"])
        group = groups.setdefault(key, {"tolerance": r["tolerance"], "ok": True})
        group["ok"] = group["ok"] and r["ok"]
        if "error" in r:
            group["error"] = r["error"].splitlines()[0][:160]
        else:
            group[r["quantity"]] = f"{r['fused_vs_portable']:.1e}"
    for (fw, kernel, name, dtype, causal), g in groups.items():
        errors = (f"ERROR: {g['error']} | - | -" if "error" in g else
                  f"{g.get('out', '-')} | {g.get('d_qk', '-')} | {g.get('d_v', '-')}")
        lines.append(f"| {fw} | {kernel} | {name} | {dtype} | {causal} | {errors} | "
                     f"{g['tolerance']:.0e} | {'yes' if g['ok'] else 'NO'} |")
    return lines + [""]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--headline", action="store_true",
                        help="only suites/gpu-headline.toml's cases, and the kernel checks")
    parser.add_argument("--kernel-check", action="append", default=[], metavar="JSON",
                        help="with --headline: a gpu_kernel_check.py --json file (repeatable)")
    args = parser.parse_args()
    if args.kernel_check and not args.headline:
        parser.error("--kernel-check goes with --headline")
    sys.exit(headline(args.run_dir, args.kernel_check) if args.headline else main(args.run_dir))
