"""Does an OpenMP setting make CPU timings hold up under contention? Measured, not assumed.

Runs one quickstart case (default: LSH fwd+bwd, torch, L=4096, 4 hashes) in real workers,
idle and with competing busy processes on the worker's CPUs, under each OpenMP setting, in
interleaved rounds, and prints per setting and load: median time, its ratio to the idle
default, rel. IQR, other processes' CPU share and whether the case was marked unstable.

    python benchmarks/noise_policy.py [--rounds 2] [--busy 2] [--out FILE.json]

Run it on an otherwise idle machine; it starts its own load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from statistics import median

from attnbench.runner.case import Case
from attnbench.runner.run import run_case

SETTINGS = {
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "OMP_PROC_BIND=close, OMP_PLACES=cores": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
}
_OMP = ("OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES")


def quickstart_case(length: int, n_hashes: int) -> Case:
    return Case(variant="lsh", framework="torch", mode="forward-backward", length=length,
                d_model=256, n_heads=4, n_hashes=n_hashes, n_buckets=length // 32,
                chunk_len=64, kernel="auto", threads=2, warmup=1, min_repeats=3,
                max_repeats=10, time_budget_s=3, timeout_s=240)


def measure(case: Case, setting: dict[str, str], busy: int) -> dict:
    saved = {k: os.environ.pop(k) for k in _OMP if k in os.environ}
    os.environ.update(setting)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        out = run_case(case)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
        for k in setting:
            os.environ.pop(k, None)
        os.environ.update(saved)
    if out.status != "ok":
        raise RuntimeError(f"{case.label()}: {out.status}: {out.error}")
    m = out.metrics
    return {"time_median_s": m["time_median_s"], "time_rel_iqr": m["time_rel_iqr"],
            "other_cpu_frac": m["machine_other_cpu_frac"], "unstable": m["unstable"],
            "reasons": m["unstable_reasons"], "cpus": m["cpus"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--busy", type=int, default=2, help="competing busy processes")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--out", help="also write every measurement as JSON")
    args = p.parse_args()
    case = quickstart_case(args.length, args.n_hashes)
    results: list[dict] = []
    for r in range(args.rounds):
        for name, setting in SETTINGS.items():
            for busy in (0, args.busy):
                m = measure(case, setting, busy)
                results.append({"round": r, "setting": name, "busy": busy, **m})
                print(f"round {r} {name:<38} busy={busy}: {m['time_median_s'] * 1e3:8.1f} ms "
                      f"IQR {m['time_rel_iqr']:.1%} others {m['other_cpu_frac']:.0%} "
                      f"unstable={m['unstable']}", file=sys.stderr, flush=True)
    base = median(x["time_median_s"] for x in results
                  if x["setting"] == "default" and x["busy"] == 0)
    print(f"\n{case.label()}; ratio = median over rounds / idle default ({base * 1e3:.1f} ms)\n")
    print("| setting | load | median ms | ratio | rel. IQR | others' CPU | unstable |")
    print("|---|---|---|---|---|---|---|")
    for name in SETTINGS:
        for busy in (0, args.busy):
            xs = [x for x in results if x["setting"] == name and x["busy"] == busy]
            t = median(x["time_median_s"] for x in xs)
            print(f"| {name} | {busy} busy | {t * 1e3:.1f} | {t / base:.2f} | "
                  f"{median(x['time_rel_iqr'] for x in xs):.1%} | "
                  f"{median(x['other_cpu_frac'] for x in xs):.0%} | "
                  f"{sum(x['unstable'] for x in xs)}/{len(xs)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
