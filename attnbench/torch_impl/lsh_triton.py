"""Triton kernels for sorted band attention: the chunk-window step of LSH attention, fused.

Semantics (those of :func:`attnbench.reference.band_attention`). G independent groups
(batch * heads), each with N = n_hashes * L slots already in sorted (round, bucket, position)
order: q, k [G, N, dh], v [G, N, dv], positions [G, N] (the original position of each slot).
Chunk c is slots ``c * C .. c * C + C - 1``; it attends to chunks ``(c + o) mod n_chunks`` for
``o`` in ``[-n_chunks_before, n_chunks_after]``, in that order (a chunk met twice counts twice).
Logits are ``q . k`` (keys come normalised and scaled); a key at the query's own position is
*replaced* by SELF_MASK_VALUE, a later one (causal) by MASK_VALUE; replaced logits are constants
and carry no gradient.

What is fused, and why. Hashing, the sort, the unsort and the combination of rounds stay in
torch: they are gathers and small reductions that torch already does at memory speed. The band
is the expensive part (N * window * C logits): the plain torch path builds every block of logits
in memory and loops over blocks in Python; here each program keeps one chunk's queries and an
online softmax in registers and streams the window's key/value chunks past them, so no logit
ever reaches memory.

Passes (one launch each, 1-D grid over (group, chunk, block), chunks fastest after the blocks
so neighbouring programs share key/value chunks in L2; tiles per pass in ``_TILES``):

* forward, one program per block of BLOCK_M queries: q [M, dh] and the running (max, sum,
  out [M, dv]) stay in registers while the window's keys stream past in blocks of BLOCK_N;
  returns out, row_max, row_sum. Max and sum are kept apart rather than folded into a
  log-sum-exp: a row whose only target is its masked self has logits near -1e5, where float32
  cannot hold ``logit - lse`` precisely.
* backward d_k, d_v, one program per block of BLOCK_N keys: its k, v and d_k, d_v accumulators
  stay in registers while it visits (in blocks of BLOCK_M) every query chunk whose window
  holds it (query chunk ``(c - o) mod n_chunks`` for each offset o), recomputing the
  probabilities from the saved row_max and row_sum.
* backward d_q, one program per block of BLOCK_M queries, visiting its window again.

No atomics: every output row is written by exactly one program, so results are deterministic.
With ``p = exp(l - row_max) / row_sum`` and the caller's ``delta`` (``sum(d_out * out) - d_lse``
for the usual VJP), ``d_l = p * (d_o . v - delta)``, zero where the logit was replaced.

dtypes: q, k, v all float32, bfloat16 or float16; logits, softmax statistics and accumulators
are float32 and every output is float32. As in flash attention, probabilities (and d_o, d_l) are
cast to the input dtype before their matmuls. float32 matmuls run as 3xTF32 (``_dot``: three
TF32 products of split operands, docs/architecture.md §3). Head sizes are padded to a power of
two >= 16 (tl.dot's minimum) with masked loads, so any d works; chunk_len itself must be a power
of two >= 16.

Interpreter mode is chosen at import time. CPU tensors run under the Triton interpreter only,
which needs ``TRITON_INTERPRET=1`` in the environment *before triton is first imported* in the
process: Triton 3.9 reads the variable whenever ``triton.jit`` wraps a function, and wraps
triton.language's own helpers (``tl.zeros``, ``tl.max``, ``tl.sum``) when triton is imported,
and this module's kernels when it is imported. A process is therefore either interpreted (every
device, CUDA tensors included, copied through the host) or compiled, for good. CPU tensors in a
compiled process raise RuntimeError (there is no fallback to another implementation), and so
does a process that changed the variable between importing triton and importing this module.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from attnbench.reference import MASK_VALUE, SELF_MASK_VALUE

_SELF_MASK = tl.constexpr(SELF_MASK_VALUE)
_CAUSAL_MASK = tl.constexpr(MASK_VALUE)
# tl.dot needs tiles >= 16; the upper bounds are what `attnbench kernels --envelope` compiled
# within a block's registers and shared memory on sm_80 and sm_90 (docs/architecture.md §3).
_MIN_CHUNK, _MAX_CHUNK = 16, 128
_MAX_D = 256
_MAX_D_FLOAT32 = 128  # padded: 3xTF32 tiles of 256-wide heads spill even at 16 x 16 blocks
_DTYPES = ("float32", "bfloat16", "float16")
# What each pass is, by name: `attnbench kernels` compiles these with `launch_options`.
PASSES = ("forward", "backward-dkdv", "backward-dq")


# --------------------------------------------------------------------------------------------
# Kernels (interpreted or compiled according to TRITON_INTERPRET at import, see docstring).
# Offsets are int64 from the group index on, so G * N * d may exceed 2**31. A program holds
# BLOCK_M queries (or BLOCK_N keys) of its chunk and streams the window past them in blocks of
# BLOCK_N keys (or BLOCK_M queries); both divide CHUNK, and launch_options picks them so that
# every tile fits the registers. UPCAST (interpreter and bfloat16 only) computes the matmuls on
# float32 copies of the loaded tiles: Triton 3.9's interpreter multiplies bfloat16 tiles as
# their raw uint16 bits.
# --------------------------------------------------------------------------------------------


@triton.jit
def _tf32(x):
    """x rounded to the nearest TF32 value (10 mantissa bits, ties away from zero), float32."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, SPLIT: tl.constexpr):
    """acc + a @ b. SPLIT (float32 operands): three TF32 products of the operands split into
    a high and a low TF32 part (3xTF32; the lo x lo term is dropped), each an exact product on
    the tensor cores and in the interpreter alike, so the interpreter measures the GPU's error.
    Otherwise 16-bit operands (or the interpreter's float32 copies) in one product."""
    if SPLIT:
        a_hi = _tf32(a)
        b_hi = _tf32(b)
        a_lo = _tf32(a - a_hi)
        b_lo = _tf32(b - b_hi)
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _program(n_chunks, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """(group, chunk, first row) of this program: BLOCK rows of one chunk, chunks fastest
    after the sub-blocks, so neighbouring programs share key/value chunks in L2."""
    pid = tl.program_id(0)
    per_chunk = CHUNK // BLOCK
    chunk = (pid // per_chunk) % n_chunks
    group = (pid // (per_chunk * n_chunks)).to(tl.int64)
    return group, chunk, chunk * CHUNK + (pid % per_chunk) * BLOCK


@triton.jit
def _band_forward_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, max_ptr, sum_ptr,
                         n_items, n_chunks, d_head, d_v, window, shift,
                         CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         DH: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
                         SPLIT: tl.constexpr, UPCAST: tl.constexpr):
    group, chunk, first = _program(n_chunks, CHUNK, BLOCK_M)
    dh, dv = tl.arange(0, DH), tl.arange(0, DV)
    dh_ok, dv_ok = dh < d_head, dv < d_v  # the padded columns load as 0 and are never stored
    q_base, v_base, p_base = group * n_items * d_head, group * n_items * d_v, group * n_items

    rows = first + tl.arange(0, BLOCK_M)
    q = tl.load(q_ptr + q_base + rows[:, None] * d_head + dh[None, :], mask=dh_ok[None, :],
                other=0.0)  # (M, DH)
    q_pos = tl.load(pos_ptr + p_base + rows)  # (M,)
    if UPCAST:
        q = q.to(tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV], tl.float32)
    for step in range(window * (CHUNK // BLOCK_N)):
        # key block step % per_chunk of chunk (chunk + o) mod n_chunks, o = i - n_chunks_before
        # with i = step // per_chunk; shift keeps the chunk index >= 0
        i = step // (CHUNK // BLOCK_N)
        cols = (((chunk + shift + i) % n_chunks) * CHUNK + (step % (CHUNK // BLOCK_N)) * BLOCK_N
                + tl.arange(0, BLOCK_N))
        k = tl.load(k_ptr + q_base + cols[:, None] * d_head + dh[None, :], mask=dh_ok[None, :],
                    other=0.0)  # (N, DH)
        v = tl.load(v_ptr + v_base + cols[:, None] * d_v + dv[None, :], mask=dv_ok[None, :],
                    other=0.0)  # (N, DV)
        k_pos = tl.load(pos_ptr + p_base + cols)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        logits = _dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), SPLIT)
        logits = tl.where(q_pos[:, None] == k_pos[None, :], _SELF_MASK, logits)
        if CAUSAL:
            logits = tl.where(q_pos[:, None] < k_pos[None, :], _CAUSAL_MASK, logits)
        # online softmax: rescale what was summed so far to the new running max
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        scale = tl.exp(row_max - new_max)  # 0 on the first visit (row_max = -inf)
        p = tl.exp(logits - new_max[:, None])
        row_sum = row_sum * scale + tl.sum(p, 1)
        acc = _dot(p.to(v.dtype), v, acc * scale[:, None], SPLIT)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(out_ptr + v_base + rows[:, None] * d_v + dv[None, :], out, mask=dv_ok[None, :])
    tl.store(max_ptr + p_base + rows, row_max)
    tl.store(sum_ptr + p_base + rows, row_sum)


@triton.jit
def _band_backward_dkdv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, max_ptr, sum_ptr, do_ptr,
                               delta_ptr, dk_ptr, dv_ptr, n_items, n_chunks, d_head, d_v, window,
                               shift, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, DH: tl.constexpr, DV: tl.constexpr,
                               CAUSAL: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr):
    group, chunk, first = _program(n_chunks, CHUNK, BLOCK_N)  # this program's key block
    dh, dv = tl.arange(0, DH), tl.arange(0, DV)
    dh_ok, dv_ok = dh < d_head, dv < d_v
    q_base, v_base, p_base = group * n_items * d_head, group * n_items * d_v, group * n_items

    cols = first + tl.arange(0, BLOCK_N)
    k = tl.load(k_ptr + q_base + cols[:, None] * d_head + dh[None, :], mask=dh_ok[None, :],
                other=0.0)  # (N, DH)
    v = tl.load(v_ptr + v_base + cols[:, None] * d_v + dv[None, :], mask=dv_ok[None, :],
                other=0.0)  # (N, DV)
    k_pos = tl.load(pos_ptr + p_base + cols)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    d_k = tl.zeros([BLOCK_N, DH], tl.float32)
    d_v_acc = tl.zeros([BLOCK_N, DV], tl.float32)
    for step in range(window * (CHUNK // BLOCK_M)):
        # Query chunk (chunk - o) mod n_chunks for o = n_chunks_after - j, j = step // per_chunk:
        # every (query chunk, offset) pair that lands here, so a chunk met twice in one window
        # is visited twice.
        j = step // (CHUNK // BLOCK_M)
        rows = (((chunk + shift + j) % n_chunks) * CHUNK + (step % (CHUNK // BLOCK_M)) * BLOCK_M
                + tl.arange(0, BLOCK_M))
        q = tl.load(q_ptr + q_base + rows[:, None] * d_head + dh[None, :], mask=dh_ok[None, :],
                    other=0.0)  # (M, DH)
        d_o = tl.load(do_ptr + v_base + rows[:, None] * d_v + dv[None, :], mask=dv_ok[None, :],
                      other=0.0)  # (M, DV)
        q_pos = tl.load(pos_ptr + p_base + rows)
        q_max = tl.load(max_ptr + p_base + rows)
        q_sum = tl.load(sum_ptr + p_base + rows)
        q_delta = tl.load(delta_ptr + p_base + rows)
        if UPCAST:
            q, d_o = q.to(tl.float32), d_o.to(tl.float32)
        # transposed (key-major) logits, so the d_k and d_v products need no transpose
        logits_t = _dot(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), SPLIT)
        replaced = k_pos[:, None] == q_pos[None, :]
        logits_t = tl.where(replaced, _SELF_MASK, logits_t)
        if CAUSAL:
            future = k_pos[:, None] > q_pos[None, :]
            logits_t = tl.where(future, _CAUSAL_MASK, logits_t)
            replaced = replaced | future
        p_t = tl.exp(logits_t - q_max[None, :]) / q_sum[None, :]  # (N, M)
        d_v_acc = _dot(p_t.to(d_o.dtype), d_o, d_v_acc, SPLIT)
        d_p_t = _dot(v, tl.trans(d_o), tl.zeros([BLOCK_N, BLOCK_M], tl.float32),
                     SPLIT)  # (N, M): d_o_i . v_j
        d_l_t = tl.where(replaced, 0.0, p_t * (d_p_t - q_delta[None, :]))
        d_k = _dot(d_l_t.to(q.dtype), q, d_k, SPLIT)
    tl.store(dk_ptr + q_base + cols[:, None] * d_head + dh[None, :], d_k, mask=dh_ok[None, :])
    tl.store(dv_ptr + v_base + cols[:, None] * d_v + dv[None, :], d_v_acc, mask=dv_ok[None, :])


@triton.jit
def _band_backward_dq_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, max_ptr, sum_ptr, do_ptr, delta_ptr,
                             dq_ptr, n_items, n_chunks, d_head, d_v, window, shift,
                             CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             DH: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
                             SPLIT: tl.constexpr, UPCAST: tl.constexpr):
    group, chunk, first = _program(n_chunks, CHUNK, BLOCK_M)  # this program's query block
    dh, dv = tl.arange(0, DH), tl.arange(0, DV)
    dh_ok, dv_ok = dh < d_head, dv < d_v
    q_base, v_base, p_base = group * n_items * d_head, group * n_items * d_v, group * n_items

    rows = first + tl.arange(0, BLOCK_M)
    q = tl.load(q_ptr + q_base + rows[:, None] * d_head + dh[None, :], mask=dh_ok[None, :],
                other=0.0)  # (M, DH)
    d_o = tl.load(do_ptr + v_base + rows[:, None] * d_v + dv[None, :], mask=dv_ok[None, :],
                  other=0.0)  # (M, DV)
    q_pos = tl.load(pos_ptr + p_base + rows)
    q_max = tl.load(max_ptr + p_base + rows)
    q_sum = tl.load(sum_ptr + p_base + rows)
    q_delta = tl.load(delta_ptr + p_base + rows)
    if UPCAST:
        q, d_o = q.to(tl.float32), d_o.to(tl.float32)
    d_q = tl.zeros([BLOCK_M, DH], tl.float32)
    for step in range(window * (CHUNK // BLOCK_N)):
        i = step // (CHUNK // BLOCK_N)  # as in the forward
        cols = (((chunk + shift + i) % n_chunks) * CHUNK + (step % (CHUNK // BLOCK_N)) * BLOCK_N
                + tl.arange(0, BLOCK_N))
        k = tl.load(k_ptr + q_base + cols[:, None] * d_head + dh[None, :], mask=dh_ok[None, :],
                    other=0.0)  # (N, DH)
        v = tl.load(v_ptr + v_base + cols[:, None] * d_v + dv[None, :], mask=dv_ok[None, :],
                    other=0.0)  # (N, DV)
        k_pos = tl.load(pos_ptr + p_base + cols)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        logits = _dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), SPLIT)
        replaced = q_pos[:, None] == k_pos[None, :]
        logits = tl.where(replaced, _SELF_MASK, logits)
        if CAUSAL:
            future = q_pos[:, None] < k_pos[None, :]
            logits = tl.where(future, _CAUSAL_MASK, logits)
            replaced = replaced | future
        p = tl.exp(logits - q_max[:, None]) / q_sum[:, None]
        d_p = _dot(d_o, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), SPLIT)  # (M, N)
        d_l = tl.where(replaced, 0.0, p * (d_p - q_delta[:, None]))
        d_q = _dot(d_l.to(k.dtype), k, d_q, SPLIT)
    tl.store(dq_ptr + q_base + rows[:, None] * d_head + dh[None, :], d_q, mask=dh_ok[None, :])


KERNELS = {"forward": _band_forward_kernel, "backward-dkdv": _band_backward_dkdv_kernel,
           "backward-dq": _band_backward_dq_kernel}


# --------------------------------------------------------------------------------------------
# Checks and launches
# --------------------------------------------------------------------------------------------


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_supported(*, chunk_len: int, d_head: int, d_v: int, dtype) -> None:
    """Raise ValueError naming the value and the rule when this kernel cannot take the case."""
    if chunk_len < _MIN_CHUNK or chunk_len & (chunk_len - 1):
        raise ValueError(f"chunk_len={chunk_len}: kernel 'triton' needs a power of two >= "
                         f"{_MIN_CHUNK}")
    if chunk_len > _MAX_CHUNK:
        raise ValueError(f"chunk_len={chunk_len}: kernel 'triton' needs chunk_len <= "
                         f"{_MAX_CHUNK} (a chunk's tiles must fit one program's registers)")
    for name, size in (("d_head", d_head), ("d_v", d_v)):
        if not 1 <= size <= _MAX_D:
            raise ValueError(f"{name}={size}: kernel 'triton' needs 1 <= {name} <= {_MAX_D}")
    if _dtype_name(dtype) not in _DTYPES:
        raise ValueError(f"dtype={_dtype_name(dtype)}: kernel 'triton' needs one of "
                         f"{', '.join(_DTYPES)}")
    width = max(16, triton.next_power_of_2(max(d_head, d_v)))
    if _dtype_name(dtype) == "float32" and width > _MAX_D_FLOAT32:
        raise ValueError(f"d_head={d_head}, d_v={d_v}: kernel 'triton' takes float32 head sizes "
                         f"up to {_MAX_D_FLOAT32} (3xTF32 tiles of wider heads spill registers "
                         f"on sm_80 and sm_90: attnbench kernels --envelope)")


def interpreting() -> bool:
    """Whether the kernels run under the Triton interpreter (fixed at import, see docstring)."""
    return isinstance(_band_forward_kernel, InterpretedFunction)


def _check_device(device: torch.device) -> None:
    if interpreting() != isinstance(tl.zeros, InterpretedFunction):
        raise RuntimeError("TRITON_INTERPRET changed between importing triton and importing "
                           "attnbench.torch_impl.lsh_triton: set it before triton is imported")
    if device.type == "cpu" and not interpreting():
        raise RuntimeError("kernel 'triton' got CPU tensors but the Triton interpreter is off: "
                           "set TRITON_INTERPRET=1 in the environment before triton is first "
                           "imported, or use CUDA tensors")
    if device.type == "cuda" and interpreting():
        raise RuntimeError("kernel 'triton' got CUDA tensors but TRITON_INTERPRET=1 is set: it "
                           "would run in the interpreter, not compiled; unset it to measure")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"device={device}: kernel 'triton' runs on CUDA, or on the CPU under "
                           f"the Triton interpreter")


def _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after):
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: need "
                         f"q, k [G, N, dh] and v [G, N, dv]")
    if positions.shape != q.shape[:2] or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions {tuple(positions.shape)} {positions.dtype}: need int32 or "
                         f"int64 [G, N] = {tuple(q.shape[:2])}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"dtypes q={q.dtype}, k={k.dtype}, v={v.dtype}: must all be the same")
    if len({t.device for t in (q, k, v, positions)}) != 1:
        raise ValueError("q, k, v and positions must be on one device")
    check_supported(chunk_len=chunk_len, d_head=q.shape[-1], d_v=v.shape[-1], dtype=q.dtype)
    if q.shape[1] == 0 or q.shape[1] % chunk_len:
        raise ValueError(f"N={q.shape[1]}: must be a positive multiple of chunk_len={chunk_len}")
    if n_chunks_before < 0 or n_chunks_after < 0:
        raise ValueError(f"n_chunks_before={n_chunks_before}, n_chunks_after={n_chunks_after}: "
                         f"must be >= 0")
    _check_device(q.device)


# (BLOCK_M, BLOCK_N, num_warps) at head sizes up to 64 (BLOCK_M counts queries, BLOCK_N keys;
# a program holds one and streams the other): `attnbench kernels` compiled these for sm_80
# and sm_90 with no spill. Wider heads halve the blocks per doubling (never below 16).
_TILES = {("16-bit", "forward"): (64, 32, 4), ("16-bit", "backward-dkdv"): (32, 64, 4),
          ("16-bit", "backward-dq"): (64, 32, 4), ("float32", "forward"): (32, 16, 4),
          ("float32", "backward-dkdv"): (32, 32, 4), ("float32", "backward-dq"): (32, 32, 4)}


def _tiles(chunk_len: int, width: int, dtype, pass_: str) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a pass at ``width``, the larger padded
    head size (the envelope these give: docs/architecture.md §3)."""
    kind = "float32" if _dtype_name(dtype) == "float32" else "16-bit"
    block_m, block_n, num_warps = _TILES[kind, pass_]
    shrink = max(1, width // 64)
    return (min(chunk_len, max(16, block_m // shrink)),
            min(chunk_len, max(16, block_n // shrink)), num_warps, 2)


def launch_options(*, chunk_len: int, d_head: int, d_v: int, dtype, causal: bool,
                   pass_: str) -> dict:
    """The constexprs, num_warps and num_stages of one pass's launch (what ``attnbench
    kernels`` compiles, so the audited kernel is the launched one)."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_={pass_!r}: one of {', '.join(PASSES)}")
    dtype = _dtype_name(dtype)
    dh = max(16, triton.next_power_of_2(d_head))
    dv = max(16, triton.next_power_of_2(d_v))
    block_m, block_n, num_warps, num_stages = _tiles(chunk_len, max(dh, dv), dtype, pass_)
    constexprs = dict(CHUNK=chunk_len, BLOCK_M=block_m, BLOCK_N=block_n, DH=dh, DV=dv,
                      CAUSAL=bool(causal), SPLIT=dtype == "float32",
                      UPCAST=interpreting() and dtype == "bfloat16")
    return {"constexprs": constexprs, "num_warps": num_warps, "num_stages": num_stages}


def precision(dtype) -> str:
    """How this kernel multiplies ``dtype`` operands (recorded in every row as
    ``kernel_precision``): 3xTF32 for float32, the 16-bit type itself otherwise; always
    accumulated in float32."""
    return "tf32x3" if _dtype_name(dtype) == "float32" else _dtype_name(dtype)


def _launch(kernel_name, q, v, chunk_len, n_chunks, causal, *args):
    """Launch one pass over every (group, chunk, block) with its launch options."""
    options = launch_options(chunk_len=chunk_len, d_head=q.shape[-1], d_v=v.shape[-1],
                             dtype=q.dtype, causal=causal, pass_=kernel_name)
    constexprs = options["constexprs"]
    block = constexprs["BLOCK_N" if kernel_name == "backward-dkdv" else "BLOCK_M"]
    grid = (q.shape[0] * n_chunks * (chunk_len // block),)
    KERNELS[kernel_name][grid](*args, num_warps=options["num_warps"],
                               num_stages=options["num_stages"], **constexprs)


def _on_device(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current one)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def band_forward(q, k, v, positions, *, chunk_len, n_chunks_before, n_chunks_after, causal):
    """Returns (out [G, N, dv], row_max [G, N], row_sum [G, N]), all float32.

    row_max is the max of each query's window logits, row_sum = sum exp(logit - row_max), and
    out = sum_j exp(l_ij - row_max_i) / row_sum_i * v_j.
    """
    _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after)
    q, k, v, positions = (t.contiguous() for t in (q, k, v, positions))
    groups, n_items, d_head = q.shape
    d_v = v.shape[-1]
    n_chunks = n_items // chunk_len
    out = torch.empty(groups, n_items, d_v, dtype=torch.float32, device=q.device)
    row_max = torch.empty(groups, n_items, dtype=torch.float32, device=q.device)
    row_sum = torch.empty_like(row_max)
    with _on_device(q.device):
        _launch("forward", q, v, chunk_len, n_chunks, causal, q, k, v, positions, out, row_max,
                row_sum, n_items, n_chunks, d_head, d_v, n_chunks_before + n_chunks_after + 1,
                (-n_chunks_before) % n_chunks)
    return out, row_max, row_sum


def band_backward(q, k, v, positions, row_max, row_sum, d_o, delta, *, chunk_len,
                  n_chunks_before, n_chunks_after, causal):
    """Returns (d_q, d_k, d_v), float32, shaped as q, k, v.

    row_max, row_sum [G, N] come from :func:`band_forward`; d_o [G, N, dv] is the output
    cotangent (cast to the inputs' dtype for its matmuls); delta [G, N] is the caller's row
    term, ``sum(d_out * out, -1) - d_lse`` for the usual VJP.
    """
    _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after)
    stats = q.shape[:2]
    if row_max.shape != stats or row_sum.shape != stats or delta.shape != stats:
        raise ValueError(f"row_max {tuple(row_max.shape)}, row_sum {tuple(row_sum.shape)}, "
                         f"delta {tuple(delta.shape)}: each must be [G, N] = {tuple(stats)}")
    if d_o.shape != v.shape:
        raise ValueError(f"d_o {tuple(d_o.shape)}: must be shaped as v {tuple(v.shape)}")
    q, k, v, positions = (t.contiguous() for t in (q, k, v, positions))
    row_max, row_sum, delta = (t.to(torch.float32).contiguous() for t in (row_max, row_sum, delta))
    d_o = d_o.to(q.dtype).contiguous()  # tl.dot needs both operands in one dtype
    groups, n_items, d_head = q.shape
    d_v = v.shape[-1]
    n_chunks = n_items // chunk_len
    window = n_chunks_before + n_chunks_after + 1
    d_q = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    d_k = torch.empty_like(d_q)
    d_v_out = torch.empty(v.shape, dtype=torch.float32, device=q.device)
    with _on_device(q.device):
        _launch("backward-dkdv", q, v, chunk_len, n_chunks, causal, q, k, v, positions,
                row_max, row_sum, d_o, delta, d_k, d_v_out, n_items, n_chunks, d_head, d_v,
                window, (-n_chunks_after) % n_chunks)
        _launch("backward-dq", q, v, chunk_len, n_chunks, causal, q, k, v, positions, row_max,
                row_sum, d_o, delta, d_q, n_items, n_chunks, d_head, d_v, window,
                (-n_chunks_before) % n_chunks)
    return d_q, d_k, d_v_out
