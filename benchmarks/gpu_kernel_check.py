"""Each fused LSH kernel against the portable core on CUDA: outputs and gradients, two shapes.

    python benchmarks/gpu_kernel_check.py [--framework torch|jax ...] [--json PATH]

For each framework (torch: kernel "triton"; JAX: kernel "pallas") and each shape below, the
whole layer function (``lsh_attention``: sort by the given buckets, the band of chunks, the
round combination) runs forward and backward twice on the same inputs and buckets, once with
the fused kernel and once with the portable core (framework ops), on the GPU. Printed: the
error of the output, d_qk and d_v of the fused kernel against the portable core, and of each
against the NumPy float64 reference (``attnbench.reference``, on the CPU) for context.

Error: max|a - b| / max(max|b|, 1), as in tests/tolerances.py. A mismatch is a fused-vs-portable
error above twice the test suite's tolerance for the dtype (tests/tolerances.py: float32 1e-5,
bfloat16 3e-2): the tests hold each implementation to that tolerance against the float64
reference, so two correct ones differ by at most twice it. The reference columns are not
gated. Exit status: 0 when every check ran and none mismatched, 1 otherwise (a check that
could not run is a row with its error, never left out), 2 on bad arguments.

``--device cpu --shapes tiny`` runs the same checks in the kernels' interpreters on a CPU
(the tests do, to check this script; it measures nothing about a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.tolerances, attnbench from this checkout
    sys.path.insert(0, str(ROOT))

from tests.tolerances import TOLERANCE, relative_error  # noqa: E402

FUSED = {"torch": "triton", "jax": "pallas"}
QUANTITIES = ("out", "d_qk", "d_v")


@dataclass(frozen=True)
class Shape:
    name: str
    dtype: str
    causal: bool
    batch: int
    heads: int
    length: int
    d_head: int
    n_hashes: int
    chunk_len: int
    n_buckets: int
    n_chunks_before: int = 1
    n_chunks_after: int = 0

    def layer_kwargs(self) -> dict:
        return {"n_buckets": self.n_buckets, "n_hashes": self.n_hashes,
                "chunk_len": self.chunk_len, "causal": self.causal,
                "n_chunks_before": self.n_chunks_before, "n_chunks_after": self.n_chunks_after}


SHAPES = {
    # The suites' setting (gpu-check: d_model 256 over 4 heads, chunk 64, causal, bfloat16)
    # at 1K tokens and 4 hashes; float32 without the causal mask, a look-ahead chunk (the
    # window both ways), another chunk length, batch 2.
    "default": (
        Shape("bf16-causal", "bfloat16", True, 1, 4, 1024, 64, 4, 64, 32),
        Shape("fp32-bidir", "float32", False, 2, 2, 1024, 64, 2, 32, 16, 1, 1),
    ),
    # The same two settings, small enough for the interpreters on a CPU.
    "tiny": (
        Shape("bf16-causal", "bfloat16", True, 1, 2, 128, 32, 2, 16, 8),
        Shape("fp32-bidir", "float32", False, 2, 1, 64, 16, 2, 16, 4, 1, 1),
    ),
}


def tolerance(dtype: str) -> float:
    return 2 * TOLERANCE[dtype]


def inputs(shape: Shape, seed: int = 0) -> dict:
    """qk, v, d_out ([B, H, L, d_head]) rounded to the shape's dtype and held in float64, and
    buckets [B, H, n_hashes, L]: the same numbers for every framework and kernel."""
    rng = np.random.default_rng(seed)
    size = (shape.batch, shape.heads, shape.length, shape.d_head)
    arrays = {k: _round(rng.standard_normal(size), shape.dtype) for k in ("qk", "v", "d_out")}
    arrays["buckets"] = rng.integers(
        0, shape.n_buckets, (shape.batch, shape.heads, shape.n_hashes, shape.length)
    ).astype(np.int32)
    return arrays


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (bfloat16: to nearest, ties to even), as float64."""
    a = a.astype(np.float32)
    if dtype == "bfloat16":
        bits = a.view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
            & np.uint32(0xFFFF0000)
        a = bits.view(np.float32)
    elif dtype != "float32":
        a = a.astype(dtype)
    return a.astype(np.float64)


def reference(shape: Shape, x: dict) -> dict:
    from attnbench import reference as R

    kw = {k: v for k, v in shape.layer_kwargs().items() if k != "n_hashes"}
    out = R.lsh_attention(x["qk"], x["v"], buckets=x["buckets"], **kw)
    d_qk, d_v = R.lsh_attention_vjp(x["qk"], x["v"], x["d_out"], buckets=x["buckets"], **kw)
    return {"out": out, "d_qk": d_qk, "d_v": d_v}


def run_torch(shape: Shape, x: dict, kernel: str, device: str) -> dict:
    import torch

    from attnbench.torch_impl.lsh_attention import lsh_attention

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 is IEEE float32, as the harness's
    dtype = getattr(torch, shape.dtype)
    qk, v = (torch.tensor(x[k], dtype=dtype, device=device, requires_grad=True)
             for k in ("qk", "v"))
    out = lsh_attention(qk, v, buckets=torch.tensor(x["buckets"], device=device),
                        kernel=kernel, **shape.layer_kwargs())
    out.backward(torch.tensor(x["d_out"], dtype=dtype, device=device))
    if device != "cpu":
        torch.cuda.synchronize()
    return {k: t.detach().to(torch.float64).cpu().numpy()
            for k, t in (("out", out), ("d_qk", qk.grad), ("d_v", v.grad))}


def run_jax(shape: Shape, x: dict, kernel: str, device: str) -> dict:
    import jax
    import jax.numpy as jnp

    from attnbench.jax_impl.lsh_attention import lsh_attention

    dtype = jnp.dtype(shape.dtype)
    buckets = jnp.asarray(x["buckets"])

    def fwd_bwd(qk, v, d_out):
        out, pullback = jax.vjp(lambda a, b: lsh_attention(
            a, b, buckets=buckets, kernel=kernel, **shape.layer_kwargs()), qk, v)
        return (out, *pullback(d_out))

    args = [jnp.asarray(x[k], dtype) for k in ("qk", "v", "d_out")]
    results = jax.block_until_ready(jax.jit(fwd_bwd)(*args))
    return {k: np.asarray(r).astype(np.float64) for k, r in zip(QUANTITIES, results, strict=True)}


def check_platform(framework: str, device: str) -> None:
    """Raise when the framework cannot run ``device`` (never a quiet CPU run on a GPU check)."""
    if framework == "torch":
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
    else:
        import jax

        backend = jax.default_backend()
        if device == "cuda" and backend != "gpu":
            raise RuntimeError(f"JAX's backend is {backend!r}, not 'gpu' (jax[cuda] missing?)")
        if device == "cpu" and backend != "cpu":
            raise RuntimeError(f"--device cpu, but JAX's backend is {backend!r}")


def check(framework: str, shape: Shape, device: str, x: dict, ref: dict) -> list[dict]:
    """The rows of one framework and shape: one per quantity, or one error row."""
    run = run_torch if framework == "torch" else run_jax
    base = {"framework": framework, "fused_kernel": FUSED[framework], "device": device,
            **asdict(shape), "tolerance": tolerance(shape.dtype)}
    try:
        check_platform(framework, device)
        fused = run(shape, x, FUSED[framework], device)
        portable = run(shape, x, "portable", device)
    except Exception as exc:  # noqa: BLE001  a check that cannot run is a row that says why
        return [{**base, "quantity": "-", "ok": False,
                 "error": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc(limit=8)}]
    rows = []
    for q in QUANTITIES:
        fused_vs_portable = relative_error(fused[q], portable[q])
        finite = bool(np.isfinite(fused[q]).all() and np.isfinite(portable[q]).all())
        rows.append({**base, "quantity": q, "fused_vs_portable": fused_vs_portable,
                     "fused_vs_reference": relative_error(fused[q], ref[q]),
                     "portable_vs_reference": relative_error(portable[q], ref[q]),
                     "finite": finite,
                     "ok": finite and fused_vs_portable <= tolerance(shape.dtype)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| framework | kernel | shape | dtype | causal | B,H,L,d | hashes | chunk | "
             "window | quantity | fused vs portable | fused vs ref | portable vs ref | "
             "tolerance | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = (f"| {r['framework']} | {r['fused_kernel']} | {r['name']} | {r['dtype']} | "
                f"{r['causal']} | {r['batch']},{r['heads']},{r['length']},{r['d_head']} | "
                f"{r['n_hashes']} | {r['chunk_len']} | "
                f"-{r['n_chunks_before']}..+{r['n_chunks_after']} | ")
        if "error" in r:
            lines.append(head + f"- | ERROR: {r['error'].splitlines()[0][:160]} | - | - | "
                         f"{r['tolerance']:.0e} | no |")
            continue
        lines.append(head + f"{r['quantity']} | {r['fused_vs_portable']:.2e} | "
                     f"{r['fused_vs_reference']:.2e} | {r['portable_vs_reference']:.2e} | "
                     f"{r['tolerance']:.0e} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", action="append", choices=sorted(FUSED),
                   help="check this framework's kernel (repeatable; default both)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default); cpu runs the kernels' interpreters (a check of this "
                   "script, not of a GPU)")
    p.add_argument("--shapes", choices=sorted(SHAPES), default="default")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.device == "cpu":  # Triton's interpreter is fixed when triton is first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    frameworks = args.framework or ["torch", "jax"]
    rows = []
    for shape in SHAPES[args.shapes]:
        x = inputs(shape)
        ref = reference(shape, x)
        for framework in frameworks:
            rows += check(framework, shape, args.device, x, ref)
    ok = all(r["ok"] for r in rows)
    print(f"# Fused LSH kernels against the portable core ({args.device})\n")
    print(table(rows))
    print("\nerror = max|a - b| / max(max|b|, 1); a mismatch is fused vs portable above the "
          "tolerance (2x tests/tolerances.py's for the dtype); ref = NumPy float64, not gated.")
    print("all checks passed" if ok else "MISMATCH or ERROR: see the rows marked NO")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "shapes": args.shapes,
                                               "ok": ok, "rows": rows}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
