"""The Triton band-attention kernels against the float64 reference ``band_attention``.

On the CPU the kernels run under the Triton interpreter (slow: sizes are kept small, C = 16);
on CUDA, when present, the same cases run compiled, plus larger tiles and determinism.
A process is interpreted or compiled for good (chosen when triton is first imported), so on a
GPU machine the CPU cases are skipped unless TRITON_INTERPRET=1 was set for the whole run.
"""

# tests/conftest.py turns Triton's interpreter on for the whole process when there is no GPU.
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from attnbench.reference import MASK_VALUE, SELF_MASK_VALUE, band_attention

pytest.importorskip("triton", reason="the torch LSH kernel needs triton (attnbench[test])")
from attnbench.torch_impl import lsh_triton  # noqa: E402
from attnbench.torch_impl.lsh_attention import sort_by_bucket  # noqa: E402
from tests.tolerances import TOLERANCE, assert_close, relative_error, tf32  # noqa: E402

CHUNK = 16

# (groups, length, n_hashes, d_head, d_v, n_before, n_after, causal)
ARGNAMES = ("groups", "length", "n_hashes", "d_head", "d_v", "n_before", "n_after", "causal")
CASES = [
    pytest.param(3, 32, 4, 64, 64, 1, 0, True, id="G3-d64-h4-causal"),
    pytest.param(3, 64, 1, 32, 48, 1, 0, False, id="G3-d32-dv48-h1"),
    pytest.param(2, 32, 2, 59, 17, 1, 0, True, id="G2-d59-dv17-h2-causal"),
    pytest.param(1, 16, 8, 24, 32, 1, 0, False, id="G1-d24-h8-one-chunk-per-round"),
    pytest.param(3, 16, 2, 7, 7, 1, 0, False, id="G3-d7-h2"),
    pytest.param(2, 32, 2, 32, 32, 2, 1, True, id="G2-d32-h2-before2-after1-causal"),
    # two chunks, a window of three: chunk c - 2 is chunk c itself, met twice
    pytest.param(2, 32, 1, 32, 16, 2, 0, True, id="G2-d32-h1-nchunks2-before2-causal"),
]


@pytest.fixture
def triton_device(device):
    """The device, where this process's Triton mode can run on it (CPU: interpreted only)."""
    if device == "cpu" and not lsh_triton.interpreting():
        pytest.skip("Triton is compiled in this process: CPU cases need TRITON_INTERPRET=1 "
                    "before triton is imported")
    return device


def sorted_positions(rng, groups, length, n_hashes, chunk_len=CHUNK):
    """positions [G, n_hashes * L] (int64) of a real sort of random buckets, as LSH makes them:
    each position once per round, rounds in order, positions ascending within a bucket."""
    n_buckets = max(2, length // chunk_len)
    buckets = torch.from_numpy(rng.integers(0, n_buckets, (groups, 1, n_hashes, length)))
    sticker, _ = sort_by_bucket(buckets.to(torch.int32), n_buckets)  # (G, 1, n_hashes * L)
    return (sticker % length).view(groups, n_hashes * length)


def make_inputs(rng, groups, length, n_hashes, d_head, d_v, chunk_len=CHUNK):
    n_items = n_hashes * length
    q = 3 * rng.standard_normal((groups, n_items, d_head))  # logits of a few units: a real softmax
    k = rng.standard_normal((groups, n_items, d_head))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # normalised keys, as LSH attention feeds them
    v = rng.standard_normal((groups, n_items, d_v))
    return q, k, v, sorted_positions(rng, groups, length, n_hashes, chunk_len)


def run_and_compare(rng, device, dtype, shape, *, n_before, n_after, causal, positions_dtype,
                    chunk_len=CHUNK):
    """Forward and backward of the kernels against the reference on the same (rounded) inputs."""
    q, k, v, positions = make_inputs(rng, *shape, chunk_len)
    kw = dict(chunk_len=chunk_len, n_chunks_before=n_before, n_chunks_after=n_after, causal=causal)
    torch_dtype = getattr(torch, dtype)
    tq, tk, tv = (torch.tensor(x, dtype=torch_dtype, device=device) for x in (q, k, v))
    q, k, v = (x.double().cpu().numpy() for x in (tq, tk, tv))  # the rounded inputs
    t_pos = positions.to(device=device, dtype=positions_dtype)
    pos = positions.numpy()

    out, row_max, row_sum = lsh_triton.band_forward(tq, tk, tv, t_pos, **kw)
    assert out.dtype == row_max.dtype == row_sum.dtype == torch.float32
    out, row_max, row_sum = (x.double().cpu().numpy() for x in (out, row_max, row_sum))
    ref_out, ref_lse = band_attention(q, k, v, pos, **kw)
    assert_close(out, ref_out, dtype, "out")
    # Degenerate rows (only the masked self in the window) sit at -1e5 and would swamp a
    # relative error, so ordinary rows are compared alone and degenerate ones exactly.
    ref_max, ref_sum = reference_stats(q, k, pos, **kw)
    ordinary = ref_max > SELF_MASK_VALUE / 2
    assert_close((row_max + np.log(row_sum))[ordinary], ref_lse[ordinary], dtype, "lse")
    assert_close(row_max[ordinary], ref_max[ordinary], dtype, "row_max")
    np.testing.assert_array_equal(row_max[~ordinary], ref_max[~ordinary])
    assert_close(row_sum, ref_sum, dtype, "row_sum")  # holds the degenerate rows' counts

    d_out = rng.standard_normal(ref_out.shape)
    d_lse = rng.standard_normal(ref_lse.shape)
    t_d_out = torch.tensor(d_out, dtype=torch_dtype, device=device)
    d_out = t_d_out.double().cpu().numpy()  # the kernel computes with d_o in the inputs' dtype
    delta = (d_out * out).sum(-1) - d_lse
    grads = lsh_triton.band_backward(
        tq, tk, tv, t_pos, torch.tensor(row_max, dtype=torch.float32, device=device),
        torch.tensor(row_sum, dtype=torch.float32, device=device), t_d_out,
        torch.tensor(delta, dtype=torch.float32, device=device), **kw)
    expected = band_attention(q, k, v, pos, **kw, d_out=d_out, d_lse=d_lse)
    for name, got, want in zip(("d_q", "d_k", "d_v"), grads, expected, strict=True):
        assert got.dtype == torch.float32
        assert_close(got.cpu().numpy(), want, dtype, name)
    return pos, row_max


def reference_stats(q, k, positions, *, chunk_len, n_chunks_before, n_chunks_after, causal):
    """(row_max, row_sum) of each query's window logits, in float64, slot by slot."""
    groups, n_items, _ = q.shape
    n_chunks = n_items // chunk_len
    row_max, row_sum = np.zeros((groups, n_items)), np.zeros((groups, n_items))
    for c in range(n_chunks):
        rows = np.arange(c * chunk_len, (c + 1) * chunk_len)
        cols = np.concatenate([np.arange(chunk_len) + (c + o) % n_chunks * chunk_len
                               for o in range(-n_chunks_before, n_chunks_after + 1)])
        logits = np.einsum("gid,gjd->gij", q[:, rows], k[:, cols])
        q_pos, kv_pos = positions[:, rows, None], positions[:, None, cols]
        logits = np.where(q_pos == kv_pos, SELF_MASK_VALUE, logits)
        if causal:
            logits = np.where(q_pos < kv_pos, MASK_VALUE, logits)
        row_max[:, rows] = logits.max(-1)
        row_sum[:, rows] = np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)
    return row_max, row_sum


@pytest.mark.parametrize(ARGNAMES, CASES)
def test_matches_reference(triton_device, rng, groups, length, n_hashes, d_head, d_v, n_before,
                           n_after, causal):
    pos, row_max = run_and_compare(
        rng, triton_device, "float32", (groups, length, n_hashes, d_head, d_v),
        n_before=n_before, n_after=n_after, causal=causal,
        positions_dtype=torch.int64 if groups % 2 else torch.int32)
    if causal:
        # position 0 sees only itself (once per round that lands in its window): a degenerate
        # row, whose max is the self-mask value and whose gradient must not flow through it
        degenerate = pos == 0
        np.testing.assert_array_equal(row_max[degenerate], SELF_MASK_VALUE)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision(triton_device, rng, dtype):
    run_and_compare(rng, triton_device, dtype, (2, 32, 2, 32, 24), n_before=1, n_after=0,
                    causal=True, positions_dtype=torch.int64)


@pytest.mark.parametrize("dtype, chunk_len, d_head", [
    ("float32", 64, 128), ("float32", 64, 64), ("bfloat16", 64, 64)],
    ids=["f32-C64-d128", "f32-C64-d64", "bf16-C64-d64"])
def test_sub_blocks(triton_device, rng, dtype, chunk_len, d_head):
    """Chunks longer than the tiles: a program holds part of its chunk and streams the window
    in blocks (launch_options' tiles at these sizes, the suites' own among them)."""
    constexprs = lsh_triton.launch_options(chunk_len=chunk_len, d_head=d_head, d_v=d_head,
                                           dtype=dtype, causal=True,
                                           pass_="forward")["constexprs"]
    assert min(constexprs["BLOCK_M"], constexprs["BLOCK_N"]) < chunk_len
    run_and_compare(rng, triton_device, dtype, (1, 2 * chunk_len, 1, d_head, d_head),
                    n_before=1, n_after=0, causal=True, positions_dtype=torch.int64,
                    chunk_len=chunk_len)


def test_float32_is_3xtf32_not_tf32(triton_device, rng):
    """float32 runs as 3xTF32: within the float32 tolerance of the float64 reference, which a
    single TF32 product (the route this replaces IEEE with nowhere) would miss by far."""
    q, k, v, positions = make_inputs(rng, 1, 64, 2, 64, 64)
    q = 4 * q  # larger logits, so a 10-bit mantissa shows in the output
    kw = dict(chunk_len=CHUNK, n_chunks_before=1, n_chunks_after=0, causal=False)
    q, k, v = (np.asarray(x, np.float32).astype(np.float64) for x in (q, k, v))
    args = [torch.tensor(x, dtype=torch.float32, device=triton_device) for x in (q, k, v)]
    out, _, _ = lsh_triton.band_forward(*args, positions.to(triton_device), **kw)
    exact, _ = band_attention(q, k, v, positions.numpy(), **kw)
    single, _ = band_attention(tf32(q), tf32(k), tf32(v), positions.numpy(), **kw)
    assert relative_error(single, exact) > 10 * TOLERANCE["float32"]  # TF32 alone: too coarse
    assert_close(out.cpu().numpy(), exact, "float32", "3xTF32 out")
    assert lsh_triton.precision(torch.float32) == "tf32x3"
    assert lsh_triton.precision(torch.bfloat16) == "bfloat16"


compiled_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or lsh_triton.interpreting(),
    reason="needs a CUDA device and compiled Triton")


@compiled_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("chunk_len, d_head", [(64, 64), (128, 128), (32, 59)],
                         ids=["C64-d64", "C128-d128", "C32-d59"])
def test_compiled_larger_tiles(rng, dtype, chunk_len, d_head):
    """Tile sizes the interpreter is too slow for (and 8 warps at C = 128), compiled only."""
    run_and_compare(rng, "cuda", dtype, (3, 4 * chunk_len, 2, d_head, d_head // 2 + 1),
                    n_before=1, n_after=1, causal=True, positions_dtype=torch.int32,
                    chunk_len=chunk_len)


@compiled_cuda
@pytest.mark.gpu
def test_compiled_deterministic(rng):
    """No atomics: two backward passes agree bit for bit."""
    q, k, v, positions = make_inputs(rng, 4, 256, 4, 64, 64, 64)
    args = [torch.tensor(x, dtype=torch.float32, device="cuda") for x in (q, k, v)]
    args.append(positions.cuda())
    kw = dict(chunk_len=64, n_chunks_before=1, n_chunks_after=0, causal=True)
    out, row_max, row_sum = lsh_triton.band_forward(*args, **kw)
    d_o, delta = torch.randn_like(out), torch.randn_like(row_max)
    first = lsh_triton.band_backward(*args, row_max, row_sum, d_o, delta, **kw)
    second = lsh_triton.band_backward(*args, row_max, row_sum, d_o, delta, **kw)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(chunk_len=8), "chunk_len=8: kernel 'triton' needs a power of two >= 16"),
    (dict(chunk_len=24), "chunk_len=24: kernel 'triton' needs a power of two >= 16"),
    (dict(chunk_len=256), "chunk_len=256: kernel 'triton' needs chunk_len <= 128 (a chunk's "
                          "tiles must fit one program's registers)"),
    (dict(d_head=0), "d_head=0: kernel 'triton' needs 1 <= d_head <= 256"),
    (dict(d_v=512), "d_v=512: kernel 'triton' needs 1 <= d_v <= 256"),
    (dict(dtype=torch.float64), "dtype=float64: kernel 'triton' needs one of float32, "
                                "bfloat16, float16"),
    (dict(d_head=129), "d_head=129, d_v=64: kernel 'triton' takes float32 head sizes up to 128 "
                       "(3xTF32 tiles of wider heads spill registers on sm_80 and sm_90: "
                       "attnbench kernels --envelope)"),
], ids=["chunk8", "chunk24", "chunk256", "d_head0", "d_v512", "float64", "float32-d129"])
def test_check_supported_rejects(kwargs, message):
    args = dict(chunk_len=16, d_head=64, d_v=64, dtype=torch.float32) | kwargs
    with pytest.raises(ValueError) as err:
        lsh_triton.check_supported(**args)
    assert str(err.value) == message


def test_check_supported_accepts():
    for dtype in (torch.float32, torch.bfloat16, "float16"):
        lsh_triton.check_supported(chunk_len=64, d_head=59, d_v=7, dtype=dtype)
        lsh_triton.check_supported(chunk_len=128, d_head=128, d_v=128, dtype=dtype)
    lsh_triton.check_supported(chunk_len=128, d_head=256, d_v=256, dtype=torch.bfloat16)


def test_rejects_bad_inputs():
    q = torch.zeros(1, 40, 16)
    positions = torch.zeros(1, 40, dtype=torch.int64)
    with pytest.raises(ValueError, match="N=40: must be a positive multiple of chunk_len=16"):
        lsh_triton.band_forward(q, q, q, positions, chunk_len=16, n_chunks_before=1,
                                n_chunks_after=0, causal=False)
    with pytest.raises(ValueError, match="positions"):
        lsh_triton.band_forward(q, q, q, positions.float(), chunk_len=8, n_chunks_before=1,
                                n_chunks_after=0, causal=False)


_NO_INTERPRETER = """
import importlib, os, sys
import torch
from attnbench.torch_impl import lsh_triton
x = torch.zeros(1, 16, 16)
args = (x, x, x, torch.zeros(1, 16, dtype=torch.int64))
kw = dict(chunk_len=16, n_chunks_before=1, n_chunks_after=0, causal=False)
try:
    lsh_triton.band_forward(*args, **kw)
except RuntimeError as err:
    print("compiled:", err)
# the variable set too late: triton (and tl.zeros) compiled, this module's kernels interpreted
os.environ["TRITON_INTERPRET"] = "1"
del sys.modules["attnbench.torch_impl.lsh_triton"]
lsh_triton = importlib.import_module("attnbench.torch_impl.lsh_triton")  # a fresh import
try:
    lsh_triton.band_forward(*args, **kw)
except RuntimeError as err:
    print("late:", err)
"""


def test_cpu_without_interpreter_raises():
    """A fresh process without TRITON_INTERPRET: CPU tensors raise, nothing falls back; and
    setting it after triton was imported is refused, not left to fail inside the interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _NO_INTERPRETER], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert "compiled: kernel 'triton' got CPU tensors but the Triton interpreter is off" \
        in done.stdout, done.stdout + done.stderr
    assert "late: TRITON_INTERPRET changed between importing triton and importing" \
        in done.stdout, done.stdout + done.stderr
