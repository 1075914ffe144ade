"""Sorted band attention as Pallas kernels, forward and backward: LSH attention's core on GPU.

Semantics (``attnbench.reference.band_attention``). Inputs come in an already sorted order, for G
independent groups (batch * heads) of N = n_hashes * L slots: q, k [G, N, dh], v [G, N, dv] and
positions [G, N] (int32, the original position held by each slot). Chunk c is slots
``c * C .. c * C + C - 1``; it attends to chunks ``(c + o) mod n_chunks`` for ``o`` in
``[-n_chunks_before, n_chunks_after]``, in that order, a chunk met twice (n_chunks < window)
counting twice. Logits are plain ``q . k`` (keys come normalised and scaled); a key at the query's
own position is replaced by SELF_MASK_VALUE and, if causal, a later one by MASK_VALUE. Replaced
logits are constants: they carry no gradient.

What is fused and why. Hashing, the sort, the gathers into sorted order and the combination of the
rounds stay in jnp (attnbench.jax_impl.lsh_attention): they are cheap, memory-bound permutations
that XLA already does well. The kernels do the band of chunks, where the time and memory go: the
forward never writes the [N, window * C] logits to memory (an online softmax over the window's
chunks, one program per query chunk), and the backward recomputes probabilities from the saved
per-row max and sum instead of storing them, as flash attention does.

- ``band_forward``: one pallas_call, grid (G, n_chunks * C / BLOCK_M), one program per block of
  BLOCK_M queries. The window is one BlockSpec per (offset, key block of BLOCK_N rows), index_map
  ``(g, s) -> (g, ((s // blocks_per_chunk + o) mod n_chunks) * C / BLOCK_N + part, 0)``, so every
  window block arrives as its own ref and the loop over them unrolls at trace time.
  Returns (out [G, N, dv], row_max [G, N], row_sum [G, N]), all float32. Max and sum stay apart
  (not only lse): a row whose only target is its masked self has logits near -1e5, where float32
  cannot hold ``logit - lse`` precisely.
- ``band_backward``: two pallas_calls, as Triton's: d_k, d_v per block of BLOCK_N keys over the
  query chunks whose windows contain it, ``(c - o) mod n_chunks``, then d_q per block of BLOCK_M
  queries over its own window. Each program writes only its own block: no atomics,
  deterministic; the price is computing each block's probabilities twice.
  With ``p_ij = exp(l_ij - row_max_i) / row_sum_i`` and ``d_l_ij = p_ij (d_o_i . v_j - delta_i)``
  (0 where replaced): d_q = d_l k, d_k = d_l^T q, d_v = p^T d_o, summed over every window a key
  is in. ``delta`` [G, N] comes from the caller (``sum(d_out * out, -1) - d_lse`` for the VJP of
  (out, lse)). Tiles per pass: ``_TILES`` (docs/architecture.md §3).

GPU lowering. In this JAX the default GPU lowering of ``pl.pallas_call`` is Mosaic GPU
(``jax_pallas_use_mosaic_gpu`` defaults to True, and pallas_call is deprecated there in favour of
``plgpu.kernel``). These kernels are written for the Triton lowering and select it explicitly
with ``compiler_params=pallas.triton.CompilerParams`` (as JAX's own ops/gpu/attention.py does), so
the backend does not depend on that flag. Triton's constraints shape the wrapper: every block is
a power of two in size and every dot has M, N, K >= 16, so chunk_len must be a power of two
>= 16 and head dims are zero-padded to a power of two >= 16 (zero columns change no logit, and
the padded output columns are sliced off). Dot operands share a dtype: the probabilities and
d_logits are rounded to the input dtype for their dots (as flash attention does), and d_o is
rounded to it on entry. ``interpret=True`` runs the same kernels on any backend (CPU tests); the
caller always decides it.

Inputs: q, k, v all float32, all bfloat16 or all float16; accumulation is float32
(``preferred_element_type``) and so are all outputs. Float32 dots run
as 3xTF32 (``_dot``: three TF32 products of split operands, docs/architecture.md §3).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from attnbench.reference import MASK_VALUE, SELF_MASK_VALUE

__all__ = ["band_backward", "band_forward", "check_supported"]

_KERNEL = "pallas"
_DTYPES = ("float32", "bfloat16", "float16")
_MIN_BLOCK = 16  # Triton's tt.dot needs M, N, K >= 16
# What compiles for sm_80 and sm_90 without spills (attnbench kernels --envelope): Pallas
# unrolls the window, so its envelope is narrower than Triton's loop: padded heads up to 64,
# chunks up to 128 (float32, whose 3xTF32 holds two parts of every operand: 64).
_MAX_HEAD = 64
_MAX_CHUNK = {"float32": 64, "bfloat16": 128, "float16": 128}
# float32 constants, so no float64 literal enters a kernel even under jax_enable_x64.
_SELF_MASK = np.float32(SELF_MASK_VALUE)
_MASK = np.float32(MASK_VALUE)
_ZERO = np.float32(0.0)


# --------------------------------------------------------------------------------------------
# Checks and shapes
# --------------------------------------------------------------------------------------------


def _is_int(n) -> bool:
    return isinstance(n, int | np.integer) and not isinstance(n, bool)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _padded(d: int) -> int:
    """The head dim the kernel runs at: the next power of two, at least 16."""
    return max(_MIN_BLOCK, 1 << (d - 1).bit_length())


def check_supported(*, chunk_len, d_head, d_v, dtype) -> None:
    """ValueError, naming the value and the rule, when this kernel cannot take the case."""
    if not _is_int(chunk_len) or chunk_len < _MIN_BLOCK or not _is_power_of_two(chunk_len):
        raise ValueError(f"chunk_len={chunk_len}: kernel {_KERNEL!r} needs a power of two >= "
                         f"{_MIN_BLOCK}")
    for name, d in (("d_head", d_head), ("d_v", d_v)):
        if not _is_int(d) or d < 1:
            raise ValueError(f"{name}={d}: kernel {_KERNEL!r} needs a positive head dim")
        if _padded(d) > _MAX_HEAD:
            raise ValueError(f"{name}={d}: kernel {_KERNEL!r} pads head dims to a power of two "
                             f"and takes at most {_MAX_HEAD} (wider tiles spill registers on "
                             f"sm_80 and sm_90: attnbench kernels --envelope)")
    name = jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"dtype={name}: kernel {_KERNEL!r} takes float32, bfloat16 or float16")
    if chunk_len > _MAX_CHUNK[name]:
        raise ValueError(f"chunk_len={chunk_len}: kernel {_KERNEL!r} takes {name} chunks up to "
                         f"{_MAX_CHUNK[name]} (longer windows spill registers on sm_80 and "
                         f"sm_90: attnbench kernels --envelope)")


def _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after):
    if q.ndim != 3 or k.shape != q.shape or v.ndim != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: kernel {_KERNEL!r} needs "
                         "q, k [G, N, dh] and v [G, N, dv]")
    if positions.shape != q.shape[:2]:
        raise ValueError(f"positions {positions.shape}: kernel {_KERNEL!r} needs [G, N] = "
                         f"{q.shape[:2]}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}: kernel {_KERNEL!r} "
                         "needs one dtype for all three (cast before the call)")
    check_supported(chunk_len=chunk_len, d_head=q.shape[-1], d_v=v.shape[-1], dtype=q.dtype)
    if q.shape[1] % chunk_len:
        raise ValueError(f"N={q.shape[1]}: kernel {_KERNEL!r} needs a multiple of "
                         f"chunk_len={chunk_len}")
    if n_chunks_before < 0 or n_chunks_after < 0:
        raise ValueError(f"n_chunks_before={n_chunks_before}, n_chunks_after={n_chunks_after}: "
                         f"kernel {_KERNEL!r} needs both >= 0")


def _pad_last(x, width: int):
    """Zero columns up to ``width``: they add nothing to any dot product."""
    return x if x.shape[-1] == width else jnp.pad(x, ((0, 0), (0, 0), (0, width - x.shape[-1])))


PASSES = ("forward", "backward-dkdv", "backward-dq")


# (BLOCK_M, BLOCK_N, num_warps) at head sizes up to 64 (BLOCK_M counts queries, BLOCK_N keys;
# a program holds one and streams the other): `attnbench kernels` compiled these for sm_80
# and sm_90 with no spill. Pallas unrolls the window, so float32 (two TF32 parts of every
# operand) needs smaller blocks than Triton's loop. Wider heads halve the blocks per doubling.
_TILES = {("16-bit", "forward"): (64, 32, 4), ("16-bit", "backward-dkdv"): (64, 32, 4),
          ("16-bit", "backward-dq"): (64, 32, 4), ("float32", "forward"): (16, 32, 4),
          ("float32", "backward-dkdv"): (32, 16, 4), ("float32", "backward-dq"): (16, 32, 4)}


def _tiles(chunk_len: int, width: int, dtype, pass_: str) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a pass at ``width``, the larger padded
    head size (the envelope these give: docs/architecture.md §3)."""
    kind = "float32" if jnp.dtype(dtype) == jnp.float32 else "16-bit"
    block_m, block_n, num_warps = _TILES[kind, pass_]
    shrink = max(1, width // 64)
    return (min(chunk_len, max(16, block_m // shrink)),
            min(chunk_len, max(16, block_n // shrink)), num_warps, 2)


def compiler_params(*, chunk_len, d_head, d_v, dtype, pass_):
    """The Triton compiler parameters of one pass (what ``attnbench kernels`` compiles); they
    also select the Triton lowering explicitly (the default in this JAX is Mosaic GPU)."""
    _, _, num_warps, num_stages = _tiles(chunk_len, max(_padded(d_head), _padded(d_v)), dtype,
                                         pass_)
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def precision(dtype) -> str:
    """How this kernel multiplies ``dtype`` operands (recorded in every row as
    ``kernel_precision``): 3xTF32 for float32, the 16-bit type itself otherwise; always
    accumulated in float32."""
    return "tf32x3" if jnp.dtype(dtype) == jnp.float32 else jnp.dtype(dtype).name


# BlockSpecs. The grid is (G, n_chunks * chunk_len // held): program (g, s) holds block s of
# ``held`` rows, i.e. rows of chunk s // (chunk_len // held). A window block is ``rows`` rows,
# part ``part`` of chunk (own chunk + shift) mod n_chunks; ``shift`` is taken mod n_chunks in
# Python, so the traced index never goes negative. Width None: a [rows] row of statistics.


def _own_spec(held: int, width: int | None) -> pl.BlockSpec:
    if width is None:
        return pl.BlockSpec((pl.squeezed, held), lambda g, s: (g, s))
    return pl.BlockSpec((pl.squeezed, held, width), lambda g, s: (g, s, 0))


def _window_spec(rows: int, width: int | None, *, chunk_len: int, held: int, n_chunks: int,
                 shift: int, part: int) -> pl.BlockSpec:
    shift %= n_chunks

    def index_map(g, s):
        lit = s.dtype.type  # literals of s's dtype: lax takes no mixed int32/int64 (x64)
        chunk = lax.div(s, lit(chunk_len // held))
        if shift:
            chunk = lax.rem(chunk + lit(shift), lit(n_chunks))
        block = chunk * lit(chunk_len // rows) + lit(part)
        return (g, block) if width is None else (g, block, 0)

    shape = (pl.squeezed, rows) if width is None else (pl.squeezed, rows, width)
    return pl.BlockSpec(shape, index_map)


# --------------------------------------------------------------------------------------------
# Kernel bodies: every value is one block, [rows, d] or [rows]
# --------------------------------------------------------------------------------------------


def _tf32(x):
    """x rounded to the nearest TF32 value (10 mantissa bits, ties away from zero), float32."""
    bits = lax.bitcast_convert_type(x, jnp.int32)
    return lax.bitcast_convert_type((bits + np.int32(0x1000)) & np.int32(-8192), jnp.float32)


def _dot(a, b, contract, split):
    """a @ b over the given (a_dim, b_dim) contraction, accumulated in float32. ``split``
    (float32 operands): three TF32 products of the operands split into a high and a low TF32
    part (3xTF32; lo x lo dropped), each exact on the tensor cores and in the interpreter
    alike, so the interpreter measures the GPU's error. Otherwise one product of 16-bit
    operands."""
    def dot(x, y, precision):
        return lax.dot_general(x, y, ((contract[:1], contract[1:]), ((), ())),
                               precision=precision, preferred_element_type=jnp.float32)

    if not split:
        return dot(a, b, lax.Precision.HIGHEST)  # no input-precision attribute on 16-bit dots
    a_hi, b_hi = _tf32(a), _tf32(b)
    a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
    tf32 = lax.Precision.DEFAULT  # the Triton lowering's TF32
    return dot(a_lo, b_hi, tf32) + dot(a_hi, b_lo, tf32) + dot(a_hi, b_hi, tf32)


def _logits(q, k, q_pos, k_pos, causal, split):
    """[M, N] float32 logits with the masks applied by replacement, and where they were."""
    logits = _dot(q, k, (1, 1), split)
    replaced = q_pos[:, None] == k_pos[None, :]
    logits = jnp.where(replaced, _SELF_MASK, logits)
    if causal:
        later = q_pos[:, None] < k_pos[None, :]
        logits = jnp.where(later, _MASK, logits)
        replaced = replaced | later
    return logits, replaced


def _forward_kernel(*refs, steps, causal, split):
    q_ref, q_pos_ref = refs[:2]
    k_refs, v_refs, k_pos_refs = (refs[2 + i * steps:2 + (i + 1) * steps] for i in range(3))
    out_ref, max_ref, sum_ref = refs[2 + 3 * steps:]
    q, q_pos = q_ref[...], q_pos_ref[...]  # (M, dh), (M,)
    for w in range(steps):  # online softmax over the window's key blocks, unrolled
        v = v_refs[w][...]  # (N, dv)
        logits, _ = _logits(q, k_refs[w][...], q_pos, k_pos_refs[w][...], causal, split)
        block_max = jnp.max(logits, axis=1)  # (M,)
        if w == 0:
            row_max = block_max
            unnormalised = jnp.exp(logits - row_max[:, None])  # (M, N)
            row_sum = jnp.sum(unnormalised, axis=1)
            acc = _dot(unnormalised.astype(v.dtype), v, (1, 0), split)  # (M, dv)
        else:
            new_max = jnp.maximum(row_max, block_max)
            rescale = jnp.exp(row_max - new_max)  # earlier blocks' terms, to the new max
            unnormalised = jnp.exp(logits - new_max[:, None])
            row_sum = rescale * row_sum + jnp.sum(unnormalised, axis=1)
            acc = rescale[:, None] * acc + _dot(unnormalised.astype(v.dtype), v, (1, 0), split)
            row_max = new_max
    out_ref[...] = acc / row_sum[:, None]
    max_ref[...] = row_max
    sum_ref[...] = row_sum


def _probs_and_grad(q, k, v, d_o, q_pos, k_pos, row_max, row_sum, delta, causal, split):
    """One [M, N] block's probabilities and logit gradient (zero where the logit was replaced:
    needed for rows whose only target is the masked self, where those probabilities are not 0)."""
    logits, replaced = _logits(q, k, q_pos, k_pos, causal, split)
    probs = jnp.exp(logits - row_max[:, None]) * (1 / row_sum)[:, None]
    d_probs = _dot(d_o, v, (1, 1), split)  # (M, N): d_o_i . v_j
    d_logits = jnp.where(replaced, _ZERO, probs * (d_probs - delta[:, None]))
    return probs, d_logits


def _backward_dkdv_kernel(*refs, steps, causal, split):
    # Own key block (k, v, positions), then per query block whose window holds it (chunks
    # (c - o) mod n_chunks): q, d_o, row_max, row_sum, delta, positions.
    k_ref, v_ref, k_pos_ref = refs[:3]
    q_refs, d_o_refs, max_refs, sum_refs, delta_refs, q_pos_refs = (
        refs[3 + i * steps:3 + (i + 1) * steps] for i in range(6))
    d_k_ref, d_v_ref = refs[3 + 6 * steps:]
    k, v, k_pos = k_ref[...], v_ref[...], k_pos_ref[...]  # (N, dh), (N, dv), (N,)
    d_k = jnp.zeros(k.shape, jnp.float32)
    d_v = jnp.zeros(v.shape, jnp.float32)
    for w in range(steps):
        q, d_o = q_refs[w][...], d_o_refs[w][...]
        probs, d_logits = _probs_and_grad(q, k, v, d_o, q_pos_refs[w][...], k_pos,
                                          max_refs[w][...], sum_refs[w][...], delta_refs[w][...],
                                          causal, split)
        d_v += _dot(probs.astype(d_o.dtype), d_o, (0, 0), split)
        d_k += _dot(d_logits.astype(q.dtype), q, (0, 0), split)
    d_k_ref[...] = d_k
    d_v_ref[...] = d_v


def _backward_dq_kernel(*refs, steps, causal, split):
    # Own query block (q, d_o, statistics, positions), then its window's key blocks.
    q_ref, d_o_ref, max_ref, sum_ref, delta_ref, q_pos_ref = refs[:6]
    k_refs, v_refs, k_pos_refs = (refs[6 + i * steps:6 + (i + 1) * steps] for i in range(3))
    (d_q_ref,) = refs[6 + 3 * steps:]
    q, d_o, q_pos = q_ref[...], d_o_ref[...], q_pos_ref[...]
    row_max, row_sum, delta = max_ref[...], sum_ref[...], delta_ref[...]
    d_q = jnp.zeros(q.shape, jnp.float32)
    for w in range(steps):
        k = k_refs[w][...]
        _, d_logits = _probs_and_grad(q, k, v_refs[w][...], d_o, q_pos, k_pos_refs[w][...],
                                      row_max, row_sum, delta, causal, split)
        d_q += _dot(d_logits.astype(k.dtype), k, (1, 0), split)
    d_q_ref[...] = d_q


# --------------------------------------------------------------------------------------------
# The passes
# --------------------------------------------------------------------------------------------


def _window_specs(operands, offsets, *, rows, chunk_len, held, n_chunks):
    """(specs, operands) streaming each (array, width) past the program: for each offset o,
    the chunk (own + o) mod n_chunks in blocks of ``rows`` rows, in that order."""
    specs, args = [], []
    for array, width in operands:
        for o in offsets:
            for part in range(chunk_len // rows):
                specs.append(_window_spec(rows, width, chunk_len=chunk_len, held=held,
                                          n_chunks=n_chunks, shift=o, part=part))
                args.append(array)
    return specs, args


def _call(kernel, name, *, specs, operands, out, held, n_items, chunk_len, causal, steps,
          dtype, widths, interpret):
    groups = operands[0].shape[0]
    block_m, block_n = held
    return pl.pallas_call(
        functools.partial(kernel, steps=steps, causal=causal,
                          split=jnp.dtype(dtype) == jnp.float32),
        out_shape=[jax.ShapeDtypeStruct((groups, n_items) + ((w,) if w else ()), jnp.float32)
                   for w, _ in out],
        grid=(groups, n_items // (block_m if name != "backward-dkdv" else block_n)),
        in_specs=specs,
        out_specs=[spec for _, spec in out],
        compiler_params=compiler_params(chunk_len=chunk_len, d_head=widths[0], d_v=widths[1],
                                        dtype=dtype, pass_=name),
        interpret=interpret,
        name=f"lsh_band_{name.replace('-', '_')}",
    )(*operands)


def band_forward(q, k, v, positions, *, chunk_len, n_chunks_before, n_chunks_after, causal,
                 interpret=False):
    """Band attention forward. q, k [G, N, dh], v [G, N, dv], positions [G, N].

    Returns (out [G, N, dv], row_max [G, N], row_sum [G, N]), all float32."""
    _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after)
    n_items, d_head, d_v = q.shape[1], q.shape[-1], v.shape[-1]
    offsets = range(-n_chunks_before, n_chunks_after + 1)
    dh, dv = _padded(d_head), _padded(d_v)
    block_m, block_n, _, _ = _tiles(chunk_len, max(dh, dv), q.dtype, "forward")
    q, k, v = _pad_last(q, dh), _pad_last(k, dh), _pad_last(v, dv)
    positions = positions.astype(jnp.int32)
    window, window_args = _window_specs([(k, dh), (v, dv), (positions, None)], offsets,
                                        rows=block_n, chunk_len=chunk_len, held=block_m,
                                        n_chunks=n_items // chunk_len)
    out, row_max, row_sum = _call(
        _forward_kernel, "forward",
        specs=[_own_spec(block_m, dh), _own_spec(block_m, None), *window],
        operands=[q, positions, *window_args],
        out=[(dv, _own_spec(block_m, dv)), (None, _own_spec(block_m, None)),
             (None, _own_spec(block_m, None))],
        held=(block_m, block_n), n_items=n_items, chunk_len=chunk_len, causal=causal,
        steps=len(offsets) * (chunk_len // block_n), dtype=q.dtype, widths=(d_head, d_v),
        interpret=interpret)
    return out[..., :d_v], row_max, row_sum


def band_backward(q, k, v, positions, row_max, row_sum, d_o, delta, *, chunk_len,
                  n_chunks_before, n_chunks_after, causal, interpret=False):
    """Band attention backward, given the forward's row_max, row_sum [G, N], the output
    cotangent d_o [G, N, dv] and delta [G, N]. Returns (d_q, d_k, d_v), all float32.

    Two launches, as Triton's: d_k, d_v per key block over the query chunks whose windows hold
    it, ``(c - o) mod n_chunks``; then d_q per query block over its own window."""
    _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after)
    n_items, d_head, d_v = q.shape[1], q.shape[-1], v.shape[-1]
    n_chunks = n_items // chunk_len
    offsets = range(-n_chunks_before, n_chunks_after + 1)
    dh, dv = _padded(d_head), _padded(d_v)
    d_o = _pad_last(d_o.astype(v.dtype), dv)  # dot operands share the inputs' dtype
    q, k, v = _pad_last(q, dh), _pad_last(k, dh), _pad_last(v, dv)
    positions = positions.astype(jnp.int32)
    row_max, row_sum, delta = (x.astype(jnp.float32) for x in (row_max, row_sum, delta))
    common = dict(n_items=n_items, chunk_len=chunk_len, causal=causal, dtype=q.dtype,
                  widths=(d_head, d_v), interpret=interpret)

    block_m, block_n, _, _ = _tiles(chunk_len, max(dh, dv), q.dtype, "backward-dkdv")
    query_side = [(q, dh), (d_o, dv), (row_max, None), (row_sum, None), (delta, None),
                  (positions, None)]
    window, window_args = _window_specs(query_side, [-o for o in offsets], rows=block_m,
                                        chunk_len=chunk_len, held=block_n, n_chunks=n_chunks)
    d_k, d_v_ = _call(
        _backward_dkdv_kernel, "backward-dkdv",
        specs=[_own_spec(block_n, dh), _own_spec(block_n, dv), _own_spec(block_n, None),
               *window],
        operands=[k, v, positions, *window_args],
        out=[(dh, _own_spec(block_n, dh)), (dv, _own_spec(block_n, dv))],
        held=(block_m, block_n), steps=len(offsets) * (chunk_len // block_m), **common)

    block_m, block_n, _, _ = _tiles(chunk_len, max(dh, dv), q.dtype, "backward-dq")
    window, window_args = _window_specs([(k, dh), (v, dv), (positions, None)], offsets,
                                        rows=block_n, chunk_len=chunk_len, held=block_m,
                                        n_chunks=n_chunks)
    (d_q,) = _call(
        _backward_dq_kernel, "backward-dq",
        specs=[*(_own_spec(block_m, width) for _, width in query_side), *window],
        operands=[*(x for x, _ in query_side), *window_args],
        out=[(dh, _own_spec(block_m, dh))],
        held=(block_m, block_n), steps=len(offsets) * (chunk_len // block_n), **common)
    return d_q[..., :d_head], d_k[..., :d_head], d_v_[..., :d_v]
