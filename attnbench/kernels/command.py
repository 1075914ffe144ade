"""``attnbench kernels``: compile every fused kernel for a GPU target and show what it uses.

    attnbench kernels                         # the GPU suites' configurations, sm_90 and sm_80
    attnbench kernels --arch sm_90 --out DIR  # + DIR/kernels.jsonl and a cubin per row
    attnbench kernels --envelope              # every configuration the kernels are asked to take

A row per kernel pass, configuration and target: registers, spilled bytes per thread, shared
memory against the target's per-block limit, and whether ``check_supported`` accepts the
configuration. Exit 1 when a configuration that ``check_supported`` accepts spills, exceeds
the shared memory or fails to compile (a kernel that would not fit the chip); 2 on bad input or
a missing compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from attnbench.kernels.compile import ARCHS, MAX_REGISTERS
from attnbench.kernels.configs import KERNEL, KernelConfig, envelope_configs, suite_configs
from attnbench.safeio import UnsafePathError, cannot_create_in, check_outputs, write_atomic

FRAMEWORKS = tuple(KERNEL)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", action="append", choices=sorted(ARCHS),
                   help="target (repeatable; default: sm_90 and sm_80)")
    p.add_argument("--framework", action="append", choices=FRAMEWORKS,
                   help="torch (Triton) or jax (Pallas) (repeatable; default: both)")
    p.add_argument("--envelope", action="store_true",
                   help="every chunk length, head size, dtype and mask the kernels are asked "
                        "to take, not only the GPU suites' (hundreds of compiles)")
    p.add_argument("--out", metavar="DIR",
                   help="write DIR/kernels.jsonl and the cubins beside it")
    p.add_argument("--format", choices=("table", "markdown"), default="table",
                   help="markdown: the table docs/architecture.md §3 carries")


def run(args: argparse.Namespace) -> int:
    archs = args.arch or ["sm_90", "sm_80"]
    frameworks = args.framework or list(FRAMEWORKS)
    configs = (envelope_configs(frameworks) if args.envelope
               else [c for c in suite_configs() if c.framework in frameworks])
    if args.out:
        out = Path(args.out)
        try:
            check_outputs([("--out", out / "kernels.jsonl")])
            out.mkdir(parents=True, exist_ok=True)
            why = cannot_create_in(out)
        except UnsafePathError as exc:
            why = str(exc)
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why:
            print(f"attnbench kernels: error: cannot write {out}: {why}", file=sys.stderr)
            return 2
        rows = _compile_all(configs, archs, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = _compile_all(configs, archs, Path(tmp))
    if rows is None:
        return 2
    if args.out:
        write_atomic(out / "kernels.jsonl",
                     "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    print(format_table(rows, markdown=args.format == "markdown"))
    bad = [r for r in rows if r["accepted"] and problems(r)]
    if bad:
        print(f"\n{len(bad)} accepted configuration(s) do not fit: "
              + "; ".join(f"{label(r)}: {', '.join(problems(r))}" for r in bad[:10]),
              file=sys.stderr)
        return 1
    if args.out:
        print(f"\n{len(rows)} row(s) -> {out / 'kernels.jsonl'}", file=sys.stderr)
    return 0


def problems(row: dict) -> list[str]:
    """What keeps a compiled pass from running well on its target: [] when it fits."""
    if "error" in row:
        return [f"does not compile ({row['error'][:120]})"]
    found = []
    if row["spill_bytes"]:
        found.append(f"spills {row['spill_bytes']} B/thread")
    if row["shared_bytes"] > ARCHS[row["arch"]]:
        found.append(f"shared {row['shared_bytes'] // 1024} KB > "
                     f"{ARCHS[row['arch']] // 1024} KB")
    if row["registers"] > MAX_REGISTERS:
        found.append(f"{row['registers']} registers")
    return found


def label(row: dict) -> str:
    return (f"{row['kernel']} {row['pass']} {row['dtype']} C={row['chunk_len']} "
            f"d={row['d_head']}/{row['d_v']} {'causal' if row['causal'] else 'full'} "
            f"{row['arch']}")


def format_table(rows: list[dict], markdown: bool = False) -> str:
    head = ("kernel", "pass", "dtype", "C", "d", "causal", "arch", "warps", "stages", "regs",
            "spill B", "shared KB", "compile s", "accepted", "fits")
    lines = [head]
    for r in rows:
        ok = "error" not in r
        lines.append((r["kernel"], r["pass"], r["dtype"], str(r["chunk_len"]),
                      f"{r['d_head']}/{r['d_v']}", "yes" if r["causal"] else "no", r["arch"],
                      str(r["num_warps"]), str(r["num_stages"]),
                      str(r["registers"]) if ok else "-", str(r["spill_bytes"]) if ok else "-",
                      f"{r['shared_bytes'] / 1024:.0f}" if ok else "-", f"{r['compile_s']:.1f}",
                      "yes" if r["accepted"] else "no",
                      "yes" if not problems(r) else "NO: " + ", ".join(problems(r))))
    if markdown:
        return "\n".join(["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(head),
                          *("| " + " | ".join(line) + " |" for line in lines[1:])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _compile_all(configs: list[KernelConfig], archs: list[str], out: Path) -> list[dict] | None:
    """Every configuration's passes for every target, one child process per framework (both
    at once); rows in the order of ``configs``. None (with a message) when a toolchain is
    missing or a child fails."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 = default
    # a fresh cache of its own (never one under --out, which a link could lead elsewhere and
    # a second run would find full): compile_s is a real compile
    cache = Path(tempfile.mkdtemp(prefix="attnbench-triton-cache-"))
    env["TRITON_CACHE_DIR"] = str(cache)
    try:
        return _compile_children(configs, archs, out, env)
    finally:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


def _compile_children(configs: list[KernelConfig], archs: list[str], out: Path,
                      env: dict) -> list[dict] | None:
    from tqdm import tqdm


    by_framework = {}
    for config in configs:
        by_framework.setdefault(config.framework, []).append(config)
    children = {}
    for framework, group in by_framework.items():
        request = {"configs": [c.to_dict() for c in group], "archs": archs, "out": str(out)}
        child = subprocess.Popen([sys.executable, "-m", "attnbench.kernels.compile"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        child.stdin.write(json.dumps(request))
        child.stdin.close()
        children[framework] = child
    total = sum(len(c.passes) for c in configs) * len(archs)
    rows, errors = [], []
    with tqdm(total=total, desc="compiling", unit="kernel", disable=None, file=sys.stderr) as bar:
        def collect(framework, child):  # one reader per child, so neither blocks on its pipe
            for line in child.stdout:
                row = json.loads(line)
                if "fatal" in row:
                    errors.append(row["fatal"])
                    continue
                rows.append(row)
                bar.update(1)
            stderr = child.stderr.read()
            if child.wait() != 0 and not errors:
                errors.append(f"the {framework} compile failed:\n"
                              + "\n".join(stderr.strip().splitlines()[-15:]))

        readers = [threading.Thread(target=collect, args=item) for item in children.items()]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    for error in errors:
        print(f"attnbench kernels: error: {error}", file=sys.stderr)
    if errors:
        return None
    order = {c: i for i, c in enumerate(configs)}
    rows.sort(key=lambda r: (order[_config_of(r)], r["arch"] != archs[0]))
    return rows


def _config_of(row: dict) -> KernelConfig:
    return KernelConfig(**{k: row[k] for k in KernelConfig.__dataclass_fields__})
