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

- ``band_forward``: one pallas_call, grid (G, n_chunks), one program per query chunk. The window
  is one BlockSpec per offset, index_map ``(g, c) -> (g, (c + o) mod n_chunks, 0)``, so every
  window chunk arrives as its own [C, d] block and the loop over offsets unrolls at trace time.
  Returns (out [G, N, dv], row_max [G, N], row_sum [G, N]), all float32. Max and sum stay apart
  (not only lse): a row whose only target is its masked self has logits near -1e5, where float32
  cannot hold ``logit - lse`` precisely.
- ``band_backward``: one pallas_call, grid (G, n_chunks). Program c first computes d_k, d_v of
  key chunk c by visiting the query chunks whose windows contain it, ``(c - o) mod n_chunks``,
  then d_q of query chunk c by visiting its own window. Each program writes only its own chunk:
  no atomics, deterministic; the price is computing each block's probabilities twice.
  With ``p_ij = exp(l_ij - row_max_i) / row_sum_i`` and ``d_l_ij = p_ij (d_o_i . v_j - delta_i)``
  (0 where replaced): d_q = d_l k, d_k = d_l^T q, d_v = p^T d_o, summed over every window a key
  is in. ``delta`` [G, N] comes from the caller (``sum(d_out * out, -1) - d_lse`` for the VJP of
  (out, lse)).

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
(``preferred_element_type``) and so are all outputs. Float32 dots run at full precision
(``Precision.HIGHEST``: IEEE, no TF32) unless ``allow_tf32``.
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
_MAX_HEAD = 256  # padded head dim: [C, d] float32 accumulators must stay in registers
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
                             f"and takes at most {_MAX_HEAD}")
    name = jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"dtype={name}: kernel {_KERNEL!r} takes float32, bfloat16 or float16")


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


def _precision(dtype, allow_tf32: bool):
    # Triton lowering: DEFAULT on float32 means TF32, HIGHEST means IEEE; for 16-bit inputs
    # HIGHEST leaves Triton's default (no input-precision attribute on a bf16/fp16 dot).
    if allow_tf32 and jnp.dtype(dtype) == jnp.float32:
        return lax.Precision.DEFAULT
    return lax.Precision.HIGHEST


def _compiler_params(chunk_len: int, width: int):
    # Selects the Triton lowering explicitly (the default in this JAX is Mosaic GPU).
    return pltriton.CompilerParams(num_warps=4 if chunk_len * width <= 64 * 64 else 8)


# BlockSpecs: a [C, d] block (or a [C] row of statistics) of chunk (c + shift) mod n_chunks.
# ``shift`` is taken mod n_chunks in Python, so the traced index never goes negative.


def _block_spec(chunk_len: int, width: int | None, shift: int, n_chunks: int) -> pl.BlockSpec:
    """[C, width] block of chunk (c + shift) mod n_chunks, or a [C] row when width is None."""
    shift %= n_chunks

    def index_map(g, c):
        # A literal of c's own dtype: lax.rem takes no mixed int32/int64 (jax_enable_x64).
        chunk = c if shift == 0 else lax.rem(c + shift, c.dtype.type(n_chunks))
        return (g, chunk) if width is None else (g, chunk, 0)

    shape = (pl.squeezed, chunk_len) if width is None else (pl.squeezed, chunk_len, width)
    return pl.BlockSpec(shape, index_map)


# --------------------------------------------------------------------------------------------
# Kernel bodies: every value is one chunk, [C, d] or [C]
# --------------------------------------------------------------------------------------------


def _dot(a, b, contract, precision):
    """a @ b over the given (a_dim, b_dim) contraction, accumulated in float32."""
    return lax.dot_general(a, b, ((contract[:1], contract[1:]), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def _logits(q, k, q_pos, k_pos, causal, precision):
    """[C, C] float32 logits with the masks applied by replacement, and where they were."""
    logits = _dot(q, k, (1, 1), precision)
    replaced = q_pos[:, None] == k_pos[None, :]
    logits = jnp.where(replaced, _SELF_MASK, logits)
    if causal:
        later = q_pos[:, None] < k_pos[None, :]
        logits = jnp.where(later, _MASK, logits)
        replaced = replaced | later
    return logits, replaced


def _forward_kernel(*refs, window, causal, precision):
    q_ref, q_pos_ref = refs[:2]
    k_refs, v_refs, k_pos_refs = (refs[2 + i * window:2 + (i + 1) * window] for i in range(3))
    out_ref, max_ref, sum_ref = refs[2 + 3 * window:]
    q, q_pos = q_ref[...], q_pos_ref[...]  # (C, dh), (C,)
    for w in range(window):  # online softmax over the window's chunks, unrolled at trace time
        v = v_refs[w][...]  # (C, dv)
        logits, _ = _logits(q, k_refs[w][...], q_pos, k_pos_refs[w][...], causal, precision)
        block_max = jnp.max(logits, axis=1)  # (C,)
        if w == 0:
            row_max = block_max
            unnormalised = jnp.exp(logits - row_max[:, None])  # (C, C)
            row_sum = jnp.sum(unnormalised, axis=1)
            acc = _dot(unnormalised.astype(v.dtype), v, (1, 0), precision)  # (C, dv)
        else:
            new_max = jnp.maximum(row_max, block_max)
            rescale = jnp.exp(row_max - new_max)  # earlier chunks' terms, to the new max
            unnormalised = jnp.exp(logits - new_max[:, None])
            row_sum = rescale * row_sum + jnp.sum(unnormalised, axis=1)
            acc = rescale[:, None] * acc + _dot(unnormalised.astype(v.dtype), v, (1, 0),
                                                precision)
            row_max = new_max
    out_ref[...] = acc / row_sum[:, None]
    max_ref[...] = row_max
    sum_ref[...] = row_sum


def _probs_and_grad(q, k, v, d_o, q_pos, k_pos, row_max, row_sum, delta, causal, precision):
    """One [C, C] block's probabilities and logit gradient (zero where the logit was replaced:
    needed for rows whose only target is the masked self, where those probabilities are not 0)."""
    logits, replaced = _logits(q, k, q_pos, k_pos, causal, precision)
    probs = jnp.exp(logits - row_max[:, None]) * (1 / row_sum)[:, None]
    d_probs = _dot(d_o, v, (1, 1), precision)  # (C, C): d_o_i . v_j
    d_logits = jnp.where(replaced, _ZERO, probs * (d_probs - delta[:, None]))
    return probs, d_logits


def _backward_kernel(*refs, window, causal, precision):
    # Own chunk c: as queries (q, d_o, statistics) and as keys (k, v), then the window's refs.
    q_ref, d_o_ref, max_ref, sum_ref, delta_ref, pos_ref, k_ref, v_ref = refs[:8]
    per_offset = [refs[8 + i * window:8 + (i + 1) * window] for i in range(9)]
    q_refs, d_o_refs, max_refs, sum_refs, delta_refs, q_pos_refs = per_offset[:6]  # (c - o)
    k_refs, v_refs, k_pos_refs = per_offset[6:]  # (c + o)
    d_q_ref, d_k_ref, d_v_ref = refs[8 + 9 * window:]

    # d_k, d_v of key chunk c: sum over the query chunks whose window holds it.
    k, v, k_pos = k_ref[...], v_ref[...], pos_ref[...]  # (C, dh), (C, dv), (C,)
    d_k = jnp.zeros(k.shape, jnp.float32)
    d_v = jnp.zeros(v.shape, jnp.float32)
    for w in range(window):
        q, d_o = q_refs[w][...], d_o_refs[w][...]
        probs, d_logits = _probs_and_grad(q, k, v, d_o, q_pos_refs[w][...], k_pos,
                                          max_refs[w][...], sum_refs[w][...], delta_refs[w][...],
                                          causal, precision)
        d_v += _dot(probs.astype(d_o.dtype), d_o, (0, 0), precision)
        d_k += _dot(d_logits.astype(q.dtype), q, (0, 0), precision)
    d_k_ref[...] = d_k
    d_v_ref[...] = d_v

    # d_q of query chunk c: sum over its own window.
    q, d_o, q_pos = q_ref[...], d_o_ref[...], pos_ref[...]
    row_max, row_sum, delta = max_ref[...], sum_ref[...], delta_ref[...]
    d_q = jnp.zeros(q.shape, jnp.float32)
    for w in range(window):
        k = k_refs[w][...]
        _, d_logits = _probs_and_grad(q, k, v_refs[w][...], d_o, q_pos, k_pos_refs[w][...],
                                      row_max, row_sum, delta, causal, precision)
        d_q += _dot(d_logits.astype(k.dtype), k, (1, 0), precision)
    d_q_ref[...] = d_q


# --------------------------------------------------------------------------------------------
# The two passes
# --------------------------------------------------------------------------------------------


def band_forward(q, k, v, positions, *, chunk_len, n_chunks_before, n_chunks_after, causal,
                 allow_tf32=False, interpret=False):
    """Band attention forward. q, k [G, N, dh], v [G, N, dv], positions [G, N].

    Returns (out [G, N, dv], row_max [G, N], row_sum [G, N]), all float32."""
    _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after)
    groups, n_items, d_head = q.shape
    d_v = v.shape[-1]
    n_chunks = n_items // chunk_len
    offsets = range(-n_chunks_before, n_chunks_after + 1)
    window = len(offsets)
    dh, dv = _padded(d_head), _padded(d_v)
    q, k, v = _pad_last(q, dh), _pad_last(k, dh), _pad_last(v, dv)
    positions = positions.astype(jnp.int32)

    spec = functools.partial(_block_spec, chunk_len, n_chunks=n_chunks)
    in_specs = [spec(dh, 0), spec(None, 0),
                *(spec(dh, o) for o in offsets),  # k of each window chunk
                *(spec(dv, o) for o in offsets),  # v
                *(spec(None, o) for o in offsets)]  # key positions
    operands = [q, positions, *[k] * window, *[v] * window, *[positions] * window]
    stats = jax.ShapeDtypeStruct((groups, n_items), jnp.float32)
    out, row_max, row_sum = pl.pallas_call(
        functools.partial(_forward_kernel, window=window, causal=causal,
                          precision=_precision(q.dtype, allow_tf32)),
        out_shape=[jax.ShapeDtypeStruct((groups, n_items, dv), jnp.float32), stats, stats],
        grid=(groups, n_chunks),
        in_specs=in_specs,
        out_specs=[spec(dv, 0), spec(None, 0), spec(None, 0)],
        compiler_params=_compiler_params(chunk_len, max(dh, dv)),
        interpret=interpret,
        name="lsh_band_forward",
    )(*operands)
    return out[..., :d_v], row_max, row_sum


def band_backward(q, k, v, positions, row_max, row_sum, d_o, delta, *, chunk_len,
                  n_chunks_before, n_chunks_after, causal, allow_tf32=False, interpret=False):
    """Band attention backward, given the forward's row_max, row_sum [G, N], the output
    cotangent d_o [G, N, dv] and delta [G, N]. Returns (d_q, d_k, d_v), all float32."""
    _check_inputs(q, k, v, positions, chunk_len, n_chunks_before, n_chunks_after)
    groups, n_items, d_head = q.shape
    d_v = v.shape[-1]
    n_chunks = n_items // chunk_len
    offsets = range(-n_chunks_before, n_chunks_after + 1)
    window = len(offsets)
    dh, dv = _padded(d_head), _padded(d_v)
    d_o = _pad_last(d_o.astype(v.dtype), dv)  # dot operands share the inputs' dtype
    q, k, v = _pad_last(q, dh), _pad_last(k, dh), _pad_last(v, dv)
    positions = positions.astype(jnp.int32)
    row_max, row_sum, delta = (x.astype(jnp.float32) for x in (row_max, row_sum, delta))

    spec = functools.partial(_block_spec, chunk_len, n_chunks=n_chunks)
    own = [spec(dh, 0), spec(dv, 0), spec(None, 0), spec(None, 0), spec(None, 0), spec(None, 0),
           spec(dh, 0), spec(dv, 0)]
    own_operands = [q, d_o, row_max, row_sum, delta, positions, k, v]
    # Query-side blocks of chunks (c - o), whose windows hold key chunk c; key-side (c + o).
    query_side = [(q, dh), (d_o, dv), (row_max, None), (row_sum, None), (delta, None),
                  (positions, None)]
    key_side = [(k, dh), (v, dv), (positions, None)]
    in_specs = [*own,
                *(spec(width, -o) for _, width in query_side for o in offsets),
                *(spec(width, o) for _, width in key_side for o in offsets)]
    operands = [*own_operands,
                *(x for x, _ in query_side for _ in offsets),
                *(x for x, _ in key_side for _ in offsets)]
    d_q, d_k, d_v_ = pl.pallas_call(
        functools.partial(_backward_kernel, window=window, causal=causal,
                          precision=_precision(q.dtype, allow_tf32)),
        out_shape=[jax.ShapeDtypeStruct((groups, n_items, dh), jnp.float32),
                   jax.ShapeDtypeStruct((groups, n_items, dh), jnp.float32),
                   jax.ShapeDtypeStruct((groups, n_items, dv), jnp.float32)],
        grid=(groups, n_chunks),
        in_specs=in_specs,
        out_specs=[spec(dh, 0), spec(dh, 0), spec(dv, 0)],
        compiler_params=_compiler_params(chunk_len, max(dh, dv)),
        interpret=interpret,
        name="lsh_band_backward",
    )(*operands)
    return d_q[..., :d_head], d_k[..., :d_head], d_v_[..., :d_v]
