"""The Pallas band-attention kernels (attnbench.jax_impl.lsh_pallas) against the float64 reference.

On the CPU the kernels run in Pallas's interpreter (interpret=True); on a GPU (the ``cuda`` variant
of ``jax_device``) they run compiled through the Triton lowering. Positions come from a real
stable sort of random buckets over the rounds (as in ``sort_by_bucket``), so each position appears
once per round, as in LSH attention. Sizes stay small: the interpreter compiles every case on the
CPU.
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnbench import reference as R
from attnbench.jax_impl import lsh_pallas
from tests.tolerances import TOLERANCE, assert_close, relative_error, tf32

CHUNK = 16
N_BUCKETS = 4
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The interpreter's programs are compiled once and run once: XLA:CPU's optimisations cost more
# than they save (most of the compile time), and they change no float semantics.
INTERPRETER_COMPILE = {"xla_backend_optimization_level": 0}


@dataclass(frozen=True)
class Case:
    groups: int
    length: int
    n_hashes: int
    d_head: int
    d_v: int
    before: int = 1
    after: int = 0
    causal: bool = True
    dtype: str = "float32"
    chunk: int = CHUNK

    @property
    def settings(self) -> dict:
        return {"chunk_len": self.chunk, "n_chunks_before": self.before,
                "n_chunks_after": self.after, "causal": self.causal}


CASES = [
    pytest.param(Case(3, 32, 4, 64, 32), id="G3-d64-dv32-h4-causal"),
    pytest.param(Case(3, 64, 1, 32, 48, causal=False), id="G3-d32-dv48-h1-bidir"),
    pytest.param(Case(2, 32, 2, 24, 40), id="G2-d24-dv40-h2-causal"),
    pytest.param(Case(1, 16, 8, 59, 16), id="G1-d59-dv16-h8-causal-chunk-per-round"),
    pytest.param(Case(3, 48, 2, 32, 24, before=2, after=1, causal=False),
                 id="G3-d32-dv24-h2-before2-after1-bidir"),
    # n_chunks (2) < window: a chunk met twice counts twice.
    pytest.param(Case(3, 32, 1, 32, 32, before=2), id="G3-d32-h1-2chunks-before2-causal"),
    pytest.param(Case(2, 16, 2, 16, 24, before=2, after=1, causal=False),
                 id="G2-d16-dv24-h2-2chunks-before2-after1-bidir"),
    pytest.param(Case(3, 32, 2, 64, 32, dtype="bfloat16"), id="G3-d64-dv32-h2-causal-bf16"),
    pytest.param(Case(3, 16, 4, 32, 48, causal=False, dtype="float16"),
                 id="G3-d32-dv48-h4-bidir-fp16"),
    # Chunks longer than the tiles (compiler_params' tiles at these sizes, the suites' own
    # among them): a program holds part of its chunk and streams the window in blocks.
    pytest.param(Case(1, 128, 1, 64, 64, chunk=64), id="G1-C64-d64-causal-sub-blocks"),
    pytest.param(Case(1, 128, 1, 48, 40, causal=False, chunk=64),
                 id="G1-C64-d48-dv40-bidir-sub-blocks"),
    pytest.param(Case(1, 128, 1, 64, 64, dtype="bfloat16", chunk=64),
                 id="G1-C64-d64-causal-bf16-sub-blocks"),
]


def sorted_positions(rng, case: Case) -> np.ndarray:
    """[G, n_hashes * L] int32: the position at each sorted slot. The sort of
    ``lsh_attention.sort_by_bucket``, in NumPy (an eager lax.sort compiles anew for every
    shape): a stable sort of the slots r * L + t by the round-offset bucket r * n_buckets + b."""
    buckets = rng.integers(0, N_BUCKETS, (case.groups, case.n_hashes, case.length))
    keys = buckets + N_BUCKETS * np.arange(case.n_hashes)[:, None]
    sticker = np.argsort(keys.reshape(case.groups, -1), axis=-1, kind="stable")
    return (sticker % case.length).astype(np.int32)


def make_inputs(rng, case: Case):
    """Sorted q, k (normalised keys of the same vectors), v in the case's dtype, and float64
    copies of exactly those (rounded) values for the reference."""
    positions = sorted_positions(rng, case)
    dtype = DTYPES[case.dtype]

    def gather(x):
        return np.take_along_axis(x, positions[..., None], axis=1)

    x = rng.standard_normal((case.groups, case.length, case.d_head))
    v = rng.standard_normal((case.groups, case.length, case.d_v))
    arrays = [jnp.asarray(gather(a), dtype) for a in (x, R.normalize_keys(x), v)]
    return arrays, [np.asarray(a, np.float64) for a in arrays], positions


def jit(fn, device):
    """jax.jit, with the interpreter's cheap compile on the CPU."""
    return jax.jit(fn, compiler_options=None if on_gpu(device) else INTERPRETER_COMPILE)


def on_gpu(device) -> bool:
    return device.platform == "gpu"


def kernel_passes(case: Case, device):
    """The two passes, jitted, compiled on a GPU and interpreted elsewhere."""
    kw = {**case.settings, "interpret": not on_gpu(device)}
    return (jit(functools.partial(lsh_pallas.band_forward, **kw), device),
            jit(functools.partial(lsh_pallas.band_backward, **kw), device))


def reference_row_max(q, k, positions, case: Case) -> np.ndarray:
    """[G, N] max logit over each query's window (the reference returns only lse)."""
    groups, n_items = positions.shape
    chunk = case.chunk
    n_chunks = n_items // chunk
    row_max = np.empty((groups, n_items))
    for g in range(groups):
        for c in range(n_chunks):
            rows = np.arange(c * chunk, (c + 1) * chunk)
            cols = np.concatenate([np.arange(chunk) + (c + o) % n_chunks * chunk
                                   for o in range(-case.before, case.after + 1)])
            logits = q[g, rows] @ k[g, cols].T
            q_pos, k_pos = positions[g, rows][:, None], positions[g, cols][None, :]
            logits = np.where(q_pos == k_pos, R.SELF_MASK_VALUE, logits)
            if case.causal:
                logits = np.where(q_pos < k_pos, R.MASK_VALUE, logits)
            row_max[g, rows] = logits.max(-1)
    return row_max


@pytest.mark.parametrize("case", CASES)
def test_band_matches_reference(rng, jax_device, case):
    (q, k, v), ref_inputs, positions = make_inputs(rng, case)
    forward, backward = kernel_passes(case, jax_device)
    out, row_max, row_sum = forward(q, k, v, jnp.asarray(positions))
    for name, x in (("out", out), ("row_max", row_max), ("row_sum", row_sum)):
        assert x.dtype == jnp.float32, f"{name} is {x.dtype}"
    out, row_max, row_sum = (np.asarray(x, np.float64) for x in (out, row_max, row_sum))

    # Forward: out, then max and sum each, then lse.
    ref_out, ref_lse = R.band_attention(*ref_inputs, positions, **case.settings)
    ref_max = reference_row_max(*ref_inputs[:2], positions, case)
    assert_close(out, ref_out, case.dtype, "out")
    # Degenerate rows (causal: the only same-or-earlier key is the query itself, e.g. position
    # 0) have max exactly SELF_MASK_VALUE; elsewhere the max is a real logit.
    degenerate = ref_max < R.SELF_MASK_VALUE / 2
    if case.causal:
        assert degenerate[positions == 0].all() and degenerate.any()
        np.testing.assert_array_equal(row_max[degenerate], np.float32(R.SELF_MASK_VALUE))
    else:
        assert not degenerate.any()
    assert_close(row_max[~degenerate], ref_max[~degenerate], case.dtype, "row_max")
    assert_close(row_sum, np.exp(ref_lse - ref_max), case.dtype, "row_sum")
    assert_close((row_max + np.log(row_sum))[~degenerate], ref_lse[~degenerate], case.dtype,
                 "lse")

    # Backward with random cotangents of (out, lse); d_out rounded as the kernel rounds it.
    d_out = np.asarray(jnp.asarray(rng.standard_normal(out.shape), DTYPES[case.dtype]),
                       np.float64)
    d_lse = rng.standard_normal(positions.shape)
    delta = np.sum(d_out * out, -1) - d_lse
    grads = backward(q, k, v, jnp.asarray(positions), jnp.asarray(row_max, jnp.float32),
                     jnp.asarray(row_sum, jnp.float32), jnp.asarray(d_out, jnp.float32),
                     jnp.asarray(delta, jnp.float32))
    ref_grads = R.band_attention(*ref_inputs, positions, **case.settings, d_out=d_out,
                                 d_lse=d_lse)
    for name, got, ref, x in zip("qkv", grads, ref_grads, (q, k, v), strict=True):
        assert got.dtype == jnp.float32 and got.shape == x.shape, f"d_{name}"
        assert_close(got, ref, case.dtype, f"d_{name}")


def band_with_vjp(settings: dict):
    """(out, lse) of band attention with the kernels as its VJP, wired as the LSH core does."""

    @jax.custom_vjp
    def band(q, k, v, positions):
        return band_fwd(q, k, v, positions)[0]

    def band_fwd(q, k, v, positions):
        out, row_max, row_sum = lsh_pallas.band_forward(q, k, v, positions, **settings)
        return (out, row_max + jnp.log(row_sum)), (q, k, v, positions, out, row_max, row_sum)

    def band_bwd(residuals, cotangents):
        q, k, v, positions, out, row_max, row_sum = residuals
        d_out, d_lse = cotangents
        delta = jnp.sum(d_out * out, -1) - d_lse
        grads = lsh_pallas.band_backward(q, k, v, positions, row_max, row_sum, d_out, delta,
                                         **settings)
        return (*(g.astype(x.dtype) for g, x in zip(grads, (q, k, v), strict=True)), None)

    band.defvjp(band_fwd, band_bwd)
    return band


def test_custom_vjp_under_jit_matches_reference(rng, jax_device):
    case = Case(2, 16, 2, 24, 16, before=1, after=1, causal=True)
    (q, k, v), ref_inputs, positions = make_inputs(rng, case)
    band = band_with_vjp({**case.settings, "interpret": not on_gpu(jax_device)})
    d_out = rng.standard_normal((case.groups, case.n_hashes * case.length, case.d_v))
    d_lse = rng.standard_normal(positions.shape)

    def value_and_grads(q, k, v, positions, d_out, d_lse):
        primals, pullback = jax.vjp(band, q, k, v, positions)
        return primals, pullback((d_out, d_lse))[:3]

    (out, lse), grads = jit(value_and_grads, jax_device)(q, k, v, jnp.asarray(positions),
                                        jnp.asarray(d_out, jnp.float32),
                                        jnp.asarray(d_lse, jnp.float32))
    ref_out, ref_lse = R.band_attention(*ref_inputs, positions, **case.settings)
    assert_close(out, ref_out, "float32", "out")
    normal = ref_lse > R.SELF_MASK_VALUE / 2
    assert_close(np.asarray(lse)[normal], ref_lse[normal], "float32", "lse")
    ref_grads = R.band_attention(*ref_inputs, positions, **case.settings, d_out=d_out,
                                 d_lse=d_lse)
    for name, got, ref in zip("qkv", grads, ref_grads, strict=True):
        assert_close(got, ref, "float32", f"d_{name}")


def test_sub_block_cases_use_sub_blocks():
    """The sub-block cases above really split their chunks (a guard on CASES)."""
    for param in CASES[-3:]:
        case = param.values[0]
        tiles = lsh_pallas._tiles(case.chunk, max(case.d_head, case.d_v), case.dtype, "forward")
        assert min(tiles[:2]) < case.chunk, param.id


def test_float32_is_3xtf32_not_tf32(rng):
    """float32 runs as 3xTF32: within the float32 tolerance of the float64 reference, which a
    single TF32 product would miss by far (the interpreter computes the same exact products
    of TF32 parts as the tensor cores)."""
    case = Case(1, 64, 2, 64, 64, causal=False)
    (q, k, v), (q64, k64, v64), positions = make_inputs(rng, case)
    q, q64 = 4 * q, 4 * q64  # larger logits, so a 10-bit mantissa shows in the output
    forward, _ = kernel_passes(case, jax.devices("cpu")[0])
    out, _, _ = forward(q, k, v, jnp.asarray(positions))
    exact, _ = R.band_attention(q64, k64, v64, positions, **case.settings)
    single, _ = R.band_attention(*(tf32(x) for x in (q64, k64, v64)), positions,
                                 **case.settings)
    assert relative_error(single, exact) > 10 * TOLERANCE["float32"]
    assert_close(np.asarray(out, np.float64), exact, "float32", "3xTF32 out")
    assert lsh_pallas.precision(jnp.float32) == "tf32x3"
    assert lsh_pallas.precision(jnp.bfloat16) == "bfloat16"


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_lowers_to_triton_for_cuda(dtype):
    """Cross-lowering on any machine: the kernels pass Pallas's Triton lowering (op support,
    power-of-two blocks, dot shapes and dtypes) and the Triton backend is the one selected.
    Compiling the Triton IR to PTX, and running it, still needs a GPU (the cuda test variants)."""
    groups, n_items, d_head, d_v = 3, 64, 24, 40
    shape = jax.ShapeDtypeStruct
    inputs = (shape((groups, n_items, d_head), dtype), shape((groups, n_items, d_head), dtype),
              shape((groups, n_items, d_v), dtype), shape((groups, n_items), jnp.int32))
    row = shape((groups, n_items), jnp.float32)
    settings = {"chunk_len": CHUNK, "n_chunks_before": 2, "n_chunks_after": 1, "causal": True}
    for fn, args in ((lsh_pallas.band_forward, inputs),
                     (lsh_pallas.band_backward,
                      (*inputs, row, row, shape((groups, n_items, d_v), jnp.float32), row))):
        lowered = jax.jit(functools.partial(fn, **settings)).trace(*args).lower(
            lowering_platforms=("cuda",))
        assert "xla.gpu.triton" in lowered.as_text(), fn.__name__


# --------------------------------------------------------------------------------------------
# What the kernel cannot take
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_len", [8, 24, 0])
def test_check_supported_rejects_chunk_len(chunk_len):
    with pytest.raises(ValueError, match=rf"chunk_len={chunk_len}: kernel 'pallas' needs a power "
                                         r"of two >= 16"):
        lsh_pallas.check_supported(chunk_len=chunk_len, d_head=64, d_v=64, dtype=jnp.float32)


def test_check_supported_rejects_head_dims_and_dtypes():
    with pytest.raises(ValueError, match=r"d_head=0: .*positive"):
        lsh_pallas.check_supported(chunk_len=16, d_head=0, d_v=64, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"d_v=65: .*at most 64 \(wider tiles spill registers"):
        lsh_pallas.check_supported(chunk_len=16, d_head=64, d_v=65, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"chunk_len=128: kernel 'pallas' takes float32 chunks "
                                         r"up to 64 \(longer windows spill"):
        lsh_pallas.check_supported(chunk_len=128, d_head=64, d_v=64, dtype=jnp.float32)
    lsh_pallas.check_supported(chunk_len=128, d_head=64, d_v=64, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"dtype=float64: .*float32, bfloat16 or float16"):
        lsh_pallas.check_supported(chunk_len=16, d_head=64, d_v=64, dtype=jnp.float64)
    for dtype in ("float32", jnp.bfloat16, np.float16):  # padded head dims are fine
        lsh_pallas.check_supported(chunk_len=32, d_head=59, d_v=24, dtype=dtype)


def test_passes_reject_bad_inputs():
    q = jnp.zeros((1, 48, 16), jnp.float32)
    positions = jnp.zeros((1, 48), jnp.int32)
    kw = {"n_chunks_before": 1, "n_chunks_after": 0, "causal": False, "interpret": True}
    with pytest.raises(ValueError, match=r"N=48: .*multiple of chunk_len=32"):
        lsh_pallas.band_forward(q, q, q, positions, chunk_len=32, **kw)
    with pytest.raises(ValueError, match=r"one dtype for all three"):
        lsh_pallas.band_forward(q, q, q.astype(jnp.bfloat16), positions, chunk_len=16, **kw)
    with pytest.raises(ValueError, match=r"chunk_len=8"):
        lsh_pallas.band_backward(q, q, q, positions, positions, positions, q, positions,
                                 chunk_len=8, **kw)
