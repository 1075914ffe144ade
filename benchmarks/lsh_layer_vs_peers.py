"""Our LSH attention layer against the public Reformer implementations, one layer each.

Run it with an environment that has the peers (they are never attnbench dependencies)::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0 transformers==5.24.0 reformer-pytorch==1.4.4 \
        numpy psutil tqdm
    /tmp/peers-venv/bin/pip install -e . --no-deps
    /tmp/peers-venv/bin/python benchmarks/lsh_layer_vs_peers.py [layer_bench options]

The defaults are the issue's configuration: length 16384, d_model 256, 4 heads, chunk 64,
256 buckets, 1 and 4 hashes, batch 1, 2 threads, forward + backward, implementations
hf-lsh, lucidrains-lsh, lsh (ours) and full-fused. Every ``attnbench.layer_bench`` option
works here too (e.g. ``--lengths 4096 --repeats 3``).

This file is a layer_bench plugin: importing it registers the two peer builders, and it
passes its own path to the workers (``--plugin``), which import it before looking up an
implementation. Peer packages are imported inside the builders only.

Peer layers, matched to ours (Q/K shared, V, output projection; no dropout; one chunk
looked back, none ahead; non-causal):

hf-lsh
    ``transformers.models.reformer.modeling_reformer.LSHSelfAttention`` followed by
    ``ReformerSelfOutput`` (its output projection, which HF keeps outside the attention
    module), called as ``layer(hidden_states=x)[0]``.
lucidrains-lsh
    ``reformer_pytorch.LSHSelfAttention(dim, heads, bucket_size=chunk_len, n_hashes)``.
    It picks ``n_buckets = length // bucket_size`` itself (256 at length 16384, chunk 64,
    as the issue's config); the row records that value, and ``--n-buckets`` does not
    apply to it. It needs the length to be a multiple of ``2 * chunk_len``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from attnbench import layer_bench as lb
except ImportError:  # not installed: fall back to the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from attnbench import layer_bench as lb

PEERS = ("hf-lsh", "lucidrains-lsh")
OURS = "lsh"
FULL = "full-fused"

DEFAULTS = {
    "impls": ["hf-lsh", "lucidrains-lsh", OURS, FULL],
    "lengths": [16384],
    "n_hashes": [1, 4],
    "n_buckets": 256,
    "timeout": 900.0,  # one full-attention case at 16384 takes minutes on 2 cores
}

# (label, numerator, denominator, key, n_hashes, target, "<=" or ">=")
TARGETS = (
    ("ours / faster peer, time", OURS, "peer", "median_s", 4, 0.6, "<="),
    ("ours / faster peer, memory", OURS, "peer", "mem_MB", 4, 0.5, "<="),
    ("ours / faster peer, time", OURS, "peer", "median_s", 1, 1.0, "<="),
    ("full-fused / ours, time", FULL, OURS, "median_s", 4, 10.0, ">="),
    ("full-fused / ours, time", FULL, OURS, "median_s", 1, 10.0, ">="),
)


def _wrap(layer, call):
    """An nn.Module whose forward is ``call(layer, x)``, so the worker sees x -> y."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return call(self.layer, x)

    return Wrapped()


@lb.register("hf-lsh")
def make_hf_lsh(length: int, n_hashes: int, args: lb.Case):
    import torch
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import (
        LSHSelfAttention,
        ReformerSelfOutput,
    )

    config = ReformerConfig(
        hidden_size=args.d_model,
        num_attention_heads=args.heads,
        attention_head_size=args.d_model // args.heads,
        lsh_attn_chunk_length=args.chunk_len,
        num_buckets=args.n_buckets,
        num_hashes=n_hashes,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        is_decoder=False,
        lsh_attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
    )
    layer = torch.nn.ModuleDict(
        {"attention": LSHSelfAttention(config), "output": ReformerSelfOutput(config)}
    ).to(args.device)

    def call(m, x):
        return m["output"](m["attention"](hidden_states=x)[0])

    return _wrap(layer, call), lb.make_input(length, args)


@lb.register("lucidrains-lsh")
def make_lucidrains_lsh(length: int, n_hashes: int, args: lb.Case):
    from reformer_pytorch import LSHSelfAttention

    if length % (2 * args.chunk_len):
        raise ValueError(
            f"lucidrains-lsh needs length divisible by 2 * chunk_len = {2 * args.chunk_len}, "
            f"got length={length}"
        )
    layer = LSHSelfAttention(
        dim=args.d_model,
        heads=args.heads,
        bucket_size=args.chunk_len,
        n_hashes=n_hashes,
        causal=False,
    ).to(args.device)
    return layer, lb.make_input(length, args), {"n_buckets": length // args.chunk_len}


def faster_peer(rows: Sequence[dict], length: int, n_hashes: int) -> dict | None:
    """The peer row with the lowest median time at (length, n_hashes), if any ran ok."""
    found = [lb.find_row(rows, p, length, n_hashes) for p in PEERS]
    found = [r for r in found if r is not None]
    return min(found, key=lambda r: r["median_s"]) if found else None


def format_targets(rows: Sequence[dict]) -> str:
    lines = ["issue ratios (same run):"]
    for length in sorted({r["length"] for r in rows}):
        for label, num, den, key, h, target, op in TARGETS:
            a = lb.find_row(rows, num, length, h)
            b = faster_peer(rows, length, h) if den == "peer" else lb.find_row(rows, den, length, h)
            where = f"length={length} n_hashes={h}"
            if a is None or b is None or not b.get(key):
                lines.append(f"  {label:<28} {where}: n/a (a case is missing or failed)")
                continue
            value = a[key] / b[key]
            ok = value <= target if op == "<=" else value >= target
            peer = f" [peer: {b['impl']}]" if den == "peer" else ""
            lines.append(
                f"  {label:<28} {where}: {value:7.3f}  target {op} {target:g}  "
                f"{'PASS' if ok else 'FAIL'}{peer}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = lb.parse_args(argv, defaults=DEFAULTS)
    if args.worker is not None:
        return lb.worker_main(args.worker)
    args.plugin = [str(Path(__file__).resolve()), *args.plugin]
    rows = lb.run_cases(
        lb.cases_from_args(args), timeout=args.timeout, progress=not args.no_progress
    )
    print(lb.format_table(rows))
    # lsh / full-fused, and jax-lsh / lsh when --impls adds jax-lsh (this env needs jax then).
    for text in (lb.format_all_ratios(rows), format_targets(rows)):
        if text:
            print()
            print(text)
    if args.csv:
        lb.write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
