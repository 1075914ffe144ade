"""Compile the fused kernels for a CUDA target without a GPU, and read what each cubin uses.

Run by ``attnbench kernels`` as a child process per framework (``python -m
attnbench.kernels.compile``, a JSON request on stdin, a JSON line per compiled pass on stdout),
with ``TRITON_INTERPRET`` removed from its environment: a process that imported triton under
the interpreter cannot compile.

- Triton (torch): ``triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=
  GPUTarget("cuda", cc, 32), options)`` with the constexprs, ``num_warps`` and ``num_stages``
  that ``lsh_triton.launch_options`` gives the real launch, and the alignment a launch on
  torch's tensors specialises on (pointers and the slot count divisible by 16).
- Pallas (JAX): ``band_forward``/``band_backward`` lowered for CUDA (``lowering_platforms=
  ("cuda",)``), the Triton-dialect module taken from Pallas's Triton lowering
  (``jax._src.pallas.triton.lowering.lower_jaxpr_to_triton_module``, a private function this
  module relies on and the tests exercise), then compiled by Triton like the above with the
  ``compiler_params`` the real call passes.
- Resources: ``cuobjdump --dump-resource-usage`` on the cubin (REG, STACK = spilled bytes per
  thread, static SHARED) and the compiled kernel's dynamic shared memory (``metadata.shared``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnbench.safeio import write_atomic

# Per-block limits by target: opt-in shared memory (CUDA C Programming Guide, Table 21) and
# registers per thread.
ARCHS = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024}
MAX_REGISTERS = 255


class ToolchainMissing(RuntimeError):
    """Triton's compiler, its cuobjdump, or the JAX lowering is not installed."""


def cc_of(arch: str) -> int:
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: one of {', '.join(ARCHS)}")
    return int(arch.removeprefix("sm_"))


def _triton():
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError as exc:
        raise ToolchainMissing(f"Triton's compiler is not installed ({exc}): "
                               "pip install triton") from None
    return triton, GPUTarget


def cuobjdump_path() -> str:
    triton, _ = _triton()
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if path.is_file():
        return str(path)
    found = shutil.which("cuobjdump")
    if found is None:
        raise ToolchainMissing(f"no cuobjdump in Triton's wheel ({path}) or on PATH")
    return found


_USAGE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: str | Path) -> dict[str, dict[str, int]]:
    """``cuobjdump --dump-resource-usage``: {function: {registers, stack, shared, local}}."""
    text = subprocess.run([cuobjdump_path(), "--dump-resource-usage", str(cubin)],
                          capture_output=True, text=True, check=True).stdout
    return {m[1]: {"registers": int(m[2]), "stack": int(m[3]), "shared": int(m[4]),
                   "local": int(m[5])} for m in _USAGE.finditer(text)}


def _compile(src, arch: str, num_warps: int, num_stages: int):
    triton, GPUTarget = _triton()
    return triton.compile(src, target=GPUTarget("cuda", cc_of(arch), 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


# ------------------------------------------------------------------------------------------
# Triton (torch)
# ------------------------------------------------------------------------------------------

_TRITON_TYPES = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}


def _triton_sources(config: dict):
    """(pass, ASTSource, num_warps, num_stages) for each launch of torch's kernels."""
    from triton.compiler import ASTSource

    from attnbench.torch_impl import lsh_triton

    if lsh_triton.interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 was set when triton was imported: the kernels "
                           "are interpreted functions and cannot be compiled")
    operand = _TRITON_TYPES[config["dtype"]]
    for name, kernel in lsh_triton.KERNELS.items():
        launch = lsh_triton.launch_options(chunk_len=config["chunk_len"],
                                           d_head=config["d_head"], d_v=config["d_v"],
                                           dtype=config["dtype"], causal=config["causal"],
                                           pass_=name)
        constexprs = launch["constexprs"]
        signature, attrs = {}, {}
        for i, arg in enumerate(kernel.arg_names):
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg == "pos_ptr":
                signature[arg] = "*i64"  # torch's positions (sticker % length) are int64
            elif arg in ("q_ptr", "k_ptr", "v_ptr", "do_ptr"):
                signature[arg] = operand
            elif arg.endswith("_ptr"):
                signature[arg] = "*fp32"
            else:
                signature[arg] = "i32"
            # What a launch specialises on: torch's allocations are 16-byte aligned, the slot
            # count is a multiple of chunk_len >= 16, head sizes as given.
            divisible = {"n_items": True, "d_head": config["d_head"] % 16 == 0,
                         "d_v": config["d_v"] % 16 == 0}
            if arg.endswith("_ptr") or divisible.get(arg, False):
                attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        yield name, src, launch["num_warps"], launch["num_stages"]


# ------------------------------------------------------------------------------------------
# Pallas (JAX)
# ------------------------------------------------------------------------------------------


def _pallas_modules(fn, args) -> list[str]:
    """The Triton-dialect text of each pallas_call in ``fn(*args)``, lowered for CUDA."""
    import jax

    try:
        from jax._src.pallas.triton import lowering
    except ImportError as exc:
        raise ToolchainMissing(f"JAX's Pallas Triton lowering is not available ({exc})") from None
    original = lowering.lower_jaxpr_to_triton_module
    modules = []

    def capture(*a, **kw):
        result = original(*a, **kw)
        modules.append(result.module.operation.get_asm())
        return result

    lowering.lower_jaxpr_to_triton_module = capture
    try:
        jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    finally:
        lowering.lower_jaxpr_to_triton_module = original
    return modules


def _pallas_sources(config: dict, workdir: Path):
    import jax
    import jax.numpy as jnp

    from attnbench.jax_impl import lsh_pallas

    dtype = jnp.dtype(config["dtype"])
    chunk, d_head, d_v = config["chunk_len"], config["d_head"], config["d_v"]
    n_items = chunk * 4  # the grid's size does not change the kernel
    s = jax.ShapeDtypeStruct
    qk = s((1, n_items, d_head), dtype)
    v = s((1, n_items, d_v), dtype)
    stats = s((1, n_items), jnp.float32)
    positions = s((1, n_items), jnp.int32)
    band = dict(chunk_len=chunk, n_chunks_before=config["n_chunks_before"],
                n_chunks_after=config["n_chunks_after"], causal=config["causal"])
    calls = {
        "forward": (lambda q, k, v_, p: lsh_pallas.band_forward(q, k, v_, p, **band),
                    (qk, qk, v, positions)),
        "backward": (lambda q, k, v_, p, m, sm, do, dl: lsh_pallas.band_backward(
            q, k, v_, p, m, sm, do, dl, **band), (qk, qk, v, positions, stats, stats,
                                                  s((1, n_items, d_v), jnp.float32), stats)),
    }
    passes = {"forward": ("forward",), "backward": ("backward-dkdv", "backward-dq")}
    for call, (fn, args) in calls.items():
        modules = _pallas_modules(fn, args)
        if len(modules) != len(passes[call]):
            raise RuntimeError(f"{call}: lowering made {len(modules)} Pallas Triton module(s), "
                               f"expected {len(passes[call])}")
        for name, module in zip(passes[call], modules, strict=True):
            path = workdir / f"pallas-{name}.ttir"
            path.write_text(module)
            params = lsh_pallas.compiler_params(chunk_len=chunk, d_head=d_head, d_v=d_v,
                                                dtype=config["dtype"], pass_=name)
            yield name, str(path), params.num_warps, params.num_stages or 3


# ------------------------------------------------------------------------------------------
# One configuration, every pass
# ------------------------------------------------------------------------------------------


def _refusal(config: dict) -> str | None:
    """What the kernel's ``check_supported`` says of ``config``: None when it takes it."""
    if config["framework"] == "torch":
        from attnbench.torch_impl.lsh_triton import check_supported
    else:
        from attnbench.jax_impl.lsh_pallas import check_supported
    try:
        check_supported(chunk_len=config["chunk_len"], d_head=config["d_head"],
                        d_v=config["d_v"], dtype=config["dtype"])
    except ValueError as exc:
        return str(exc)
    return None


def cubin_name(config: dict, pass_: str, arch: str) -> str:
    return (f"{config['framework']}-{pass_}-{config['dtype']}-c{config['chunk_len']}"
            f"-dh{config['d_head']}-dv{config['d_v']}-{'causal' if config['causal'] else 'full'}"
            f"-w{config['n_chunks_before']}.{config['n_chunks_after']}-{arch}.cubin")


def compile_config(config: dict, arch: str, out_dir: Path) -> list[dict]:
    """A row per pass of ``config``'s kernel compiled for ``arch`` (an error row for a pass
    the compiler refuses: over the shared memory it can allocate, for one)."""
    rows = []
    refusal = _refusal(config)
    with tempfile.TemporaryDirectory() as tmp:
        if config["framework"] == "torch":
            kernel, sources = "triton", _triton_sources(config)
        else:
            kernel, sources = "pallas", _pallas_sources(config, Path(tmp))
        for name, src, num_warps, num_stages in sources:
            row = {**config, "kernel": kernel, "pass": name, "arch": arch,
                   "num_warps": num_warps, "num_stages": num_stages,
                   "accepted": refusal is None, "refusal": refusal}
            start = time.perf_counter()
            try:
                compiled = _compile(src, arch, num_warps, num_stages)
            except ToolchainMissing:
                raise
            except Exception as exc:  # the compiler's refusal is a result, named in the row
                rows.append({**row, "compile_s": round(time.perf_counter() - start, 3),
                             "error": f"{type(exc).__name__}: {str(exc).strip()[-400:]}"})
                continue
            compile_s = time.perf_counter() - start
            cubin = cubin_name(config, name, arch)
            write_atomic(out_dir / cubin, compiled.asm["cubin"])
            usage = resource_usage(out_dir / cubin)
            if len(usage) != 1:
                raise RuntimeError(f"{cubin}: expected one function, cuobjdump shows {usage}")
            (function, used), = usage.items()
            rows.append({**row, "function": function, "registers": used["registers"],
                         "spill_bytes": used["stack"],
                         "shared_bytes": compiled.metadata.shared + used["shared"],
                         "compile_s": round(compile_s, 3), "cubin": cubin})
    return rows


def main() -> int:
    request = json.load(sys.stdin)
    out_dir = Path(request["out"])
    for config in request["configs"]:
        for arch in request["archs"]:
            try:
                rows = compile_config(config, arch, out_dir)
            except ToolchainMissing as exc:
                print(json.dumps({"fatal": str(exc)}), flush=True)
                return 2
            for row in rows:
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    sys.exit(main())
