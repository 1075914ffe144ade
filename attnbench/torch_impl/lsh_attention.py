"""LSH attention (Reformer): hash, sort by bucket, attend within chunks, unsort, combine rounds.

Reads top to bottom as the algorithm (docs/architecture.md §2). Shapes: qk [B, H, L, dh],
v [B, H, L, dv], rotations [H, dh, n_hashes, n_buckets // 2], buckets [B, H, n_hashes, L]
(int32, no round offset).
The chunked attention core is one custom autograd function that keeps the inputs, the sorted keys
and values, the output and per-row softmax statistics, and recomputes probabilities block by
block in the backward (as flash attention does): memory grows with ``n_hashes * L * d`` and never
holds ``n_hashes * L * window`` logits at once.
"""

from __future__ import annotations

import math

import torch

from attnbench import checks
from attnbench.spec import AttentionSpec, resolve_kernel
from attnbench.torch_impl.common import (
    KEY_NORM_EPS,
    MASK_VALUE,
    SELF_MASK_VALUE,
    check_qkv,
    logits_dtype,
    normalize_keys,
)
from attnbench.torch_impl.full_attention import SharedQKSelfAttention

# Logit elements computed per block of chunks: large enough for efficient matmuls, small enough
# that the block's temporaries stay in cache-sized pieces and peak memory stays flat.
_BLOCK_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------
# 1. Hashing
# --------------------------------------------------------------------------------------------


def draw_rotations(n_heads: int, d_head: int, n_hashes: int, n_buckets: int, *,
                   generator: torch.Generator | None, device) -> torch.Tensor:
    """Fresh random rotations [heads, d_head, n_hashes, n_buckets // 2] in float32."""
    return torch.randn(n_heads, d_head, n_hashes, n_buckets // 2, generator=generator,
                       device=device, dtype=torch.float32)


def hash_vectors(qk: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Buckets [B, H, n_hashes, L] (int32) = argmax(concat([x R_r, -x R_r])) per round r.

    Computed one round at a time, and without materialising the concatenation: the argmax of
    [r, -r] is r's argmax if max(r) >= -min(r) (first occurrence wins a tie), else half + argmin.
    """
    dtype = logits_dtype(qk)
    qk = qk.detach().to(dtype)
    half = rotations.shape[-1]
    rounds = []
    # One buffer for every round: on CPU a fresh [B, H, L, nb/2] tensor per round costs more in
    # page faults than the matmul that fills it.
    rotated = torch.empty(*qk.shape[:3], half, dtype=dtype, device=qk.device)
    per_round = rotations.to(dtype).permute(2, 0, 1, 3).contiguous()  # (n_hashes, H, dh, nb/2)
    for r in range(rotations.shape[2]):
        torch.matmul(qk, per_round[r], out=rotated)  # (B, H, L, nb/2)
        high, arg_high = rotated.max(-1)
        low, arg_low = rotated.min(-1)
        rounds.append(torch.where(high >= -low, arg_high, arg_low + half))
    return torch.stack(rounds, 2).to(torch.int32)  # (B, H, n_hashes, L)


# --------------------------------------------------------------------------------------------
# 2. Sorting by (round, bucket, position)
# --------------------------------------------------------------------------------------------


def sort_by_bucket(buckets: torch.Tensor, n_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (sticker, undo), both [B, H, n_hashes * L] int64.

    sticker[s] = r * L + t of the item at sorted slot s; undo inverts it. The sort is stable on the
    round-offset bucket id, so ties keep position order (no composite key that could overflow).
    """
    n_hashes = buckets.shape[2]
    offsets = torch.arange(n_hashes, device=buckets.device).view(1, 1, -1, 1) * n_buckets
    keys = (buckets.long() + offsets).flatten(2)  # (B, H, n_hashes*L)
    sticker = torch.sort(keys, dim=-1, stable=True).indices
    ticker = torch.arange(keys.shape[-1], device=keys.device).expand_as(sticker)
    undo = torch.empty_like(sticker).scatter_(-1, sticker, ticker)
    return sticker, undo


# --------------------------------------------------------------------------------------------
# 3. Attention within chunks (and their neighbours), block by block
# --------------------------------------------------------------------------------------------


class _Chunks:
    """The sorted order cut into chunks, and the window of chunks each chunk attends to.

    Slot s of group g holds position ``sticker[g, s] % L`` of round ``sticker[g, s] // L``.
    Chunk c sees chunks c + o for o in [-n_before, n_after], modulo the number of chunks, so the
    first chunk looks back at the last one (across rounds). A window is built from contiguous
    slices of the sorted tensors (a memcpy, ~10x faster on CPU than gathering rows by index).
    """

    def __init__(self, sticker, undo, length, chunk_len, n_before, n_after):
        groups, n_items = sticker.shape
        self.groups, self.length, self.chunk_len = groups, length, chunk_len
        self.n_hashes, self.n_chunks = n_items // length, n_items // chunk_len
        self.offsets = list(range(-n_before, n_after + 1))
        self.positions = (sticker % length).view(groups, self.n_chunks, chunk_len)
        base = torch.arange(groups, device=sticker.device)[:, None]
        self.sort_rows = self.positions + base[..., None] * length  # (G, nc, C) rows of [G*L]
        # the sorted slot of (round r, position t), as a row of the flattened sorted tensors
        self.undo_rows = (undo + base * n_items).view(groups, self.n_hashes, length).transpose(0, 1)
        # the row of [n_hashes * G * L] round-major tensors that each sorted slot reads
        self.weight_rows = ((sticker // length) * groups * length + base * length
                            + sticker % length).flatten()

    def band_args(self, causal) -> dict:
        """The window settings, as the fused kernels take them."""
        return {"chunk_len": self.chunk_len, "n_chunks_before": -self.offsets[0],
                "n_chunks_after": self.offsets[-1], "causal": causal}

    def sort(self, x_flat: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """[G * L, d] -> [G, n_chunks, C, d] in sorted order (each position once per round);
        with start/stop only those chunks, [G, stop - start, C, d]."""
        rows = self.sort_rows[:, start:stop]
        return x_flat.index_select(0, rows.flatten()).view(*rows.shape, x_flat.shape[-1])

    def ranges(self):
        """Blocks of whole chunks whose logits hold about _BLOCK_ELEMENTS numbers."""
        per_chunk = self.groups * self.chunk_len * self.chunk_len * len(self.offsets)
        step = max(1, _BLOCK_ELEMENTS // per_chunk)
        for start in range(0, self.n_chunks, step):
            yield start, min(start + step, self.n_chunks)

    def shifted(self, start: int, stop: int, offset: int):
        """(target, source) slice pairs: chunk ``start + i + offset`` (mod n_chunks) for block
        chunk i; at most two pairs, split where the target range wraps around."""
        first = (start + offset) % self.n_chunks
        size = stop - start
        head = min(size, self.n_chunks - first)
        yield slice(first, first + head), slice(0, head)
        if head < size:
            yield slice(0, size - head), slice(head, size)

    def window(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """x [G, n_chunks, C, ...] -> [G, stop - start, W * C, ...], offset-major."""
        pieces = []
        for offset in self.offsets:
            parts = [x[:, target] for target, _ in self.shifted(start, stop, offset)]
            pieces.append(parts[0] if len(parts) == 1 else torch.cat(parts, 1))
        return torch.cat(pieces, 2)


def _dedup_log_counts(q_locs, kv_locs, chunks: _Chunks, dtype) -> torch.Tensor:
    """log(how often each key appears in the query's windows over all rounds) [G, nb, C, WC].

    q_locs [G, nb, C, n_hashes] and kv_locs [G, nb, WC, n_hashes]: the chunk of the position in
    each round. Key j is in query i's window once for every (round r, round r', offset o) with
    chunk_r'(j) == chunk_r(i) + o (mod n_chunks).
    """
    n_hashes = q_locs.shape[-1]
    counts = torch.zeros(*q_locs.shape[:3], kv_locs.shape[2], dtype=dtype, device=q_locs.device)
    for r in range(n_hashes):
        for r2 in range(n_hashes):
            diff = kv_locs[..., None, :, r2] - q_locs[..., :, None, r]  # (G, nb, C, WC)
            for offset in chunks.offsets:
                counts += torch.remainder(diff - offset, chunks.n_chunks) == 0
    return counts.log_()


def _block_logits(qk, sk, s_locs, chunks: _Chunks, causal, start, stop):
    """Recomputable part of one block of chunks [start, stop): masked logits (in sk's dtype,
    the logits dtype), the replaced-logit mask, and the block's queries and windowed keys."""
    q = chunks.sort(qk, start, stop).to(sk.dtype)  # (G, nb, C, dh)
    k = chunks.window(sk, start, stop)  # (G, nb, WC, dh)
    q_pos = chunks.positions[:, start:stop]  # (G, nb, C)
    kv_pos = chunks.window(chunks.positions, start, stop)  # (G, nb, WC)
    logits = q @ k.transpose(-1, -2)  # (G, nb, C, WC)
    replaced = q_pos[..., :, None] == kv_pos[..., None, :]
    logits.masked_fill_(replaced, SELF_MASK_VALUE)
    if causal:
        future = q_pos[..., :, None] < kv_pos[..., None, :]
        logits.masked_fill_(future, MASK_VALUE)
        replaced |= future
    if s_locs is not None:
        logits -= _dedup_log_counts(s_locs[:, start:stop], chunks.window(s_locs, start, stop),
                                    chunks, logits.dtype)
    return logits, replaced, q, k


def _normalize_keys_vjp(qk: torch.Tensor, d_k: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`normalize_keys` (k = q * r / sqrt(d), r = rsqrt(mean(q^2) + eps))."""
    d = qk.shape[-1]
    r = torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + KEY_NORM_EPS)
    dot = (d_k * qk).sum(-1, keepdim=True)
    return (d_k * r - qk * (r.pow(3) * dot / d)) / math.sqrt(d)


def _band_forward(qk, sk, sv, s_locs, chunks: _Chunks, causal, kernel):
    """Each sorted slot's output within its window [G, nc, C, dv] (logits dtype) and its row's
    softmax max and sum [G, nc, C]: the portable block loop, or one fused kernel launch."""
    if kernel == "triton":
        return _triton_forward(qk, sk, sv, chunks, causal)
    dtype = sk.dtype
    s_out = torch.empty(*sv.shape, dtype=dtype, device=sv.device)
    row_max = torch.empty(chunks.positions.shape, dtype=dtype, device=sv.device)
    row_sum = torch.empty_like(row_max)
    for start, stop in chunks.ranges():
        logits, _, _, _ = _block_logits(qk, sk, s_locs, chunks, causal, start, stop)
        # Max and sum stay apart: a row whose only target is the masked self has logits
        # near -1e5, where float32 cannot hold logit - logsumexp to better than 1e-2.
        block_max = logits.amax(-1, keepdim=True)  # (G, nb, C, 1)
        unnormalised = logits.sub_(block_max).exp_()
        block_sum = unnormalised.sum(-1, keepdim=True)
        block_v = chunks.window(sv, start, stop)  # (G, nb, WC, dv)
        s_out[:, start:stop] = (unnormalised.to(sv.dtype) @ block_v).to(dtype) / block_sum
        row_max[:, start:stop], row_sum[:, start:stop] = block_max[..., 0], block_sum[..., 0]
    return s_out, row_max, row_sum


def _band_backward(qk, sk, sv, s_locs, chunks: _Chunks, causal, kernel, row_max, row_sum,
                   slot_weights, d_out, out_dot):
    """Gradients (d_qk, d_k, d_v) [G * L, d] in the unsorted rows, d_k for the normalised keys.

    Per slot: d(round output) = w * d_out[t], and the softmax row term
    sum_j p_ij dp_ij - d_lse_i collapses to w * (d_out[t] . out[t])."""
    if kernel == "triton":
        return _triton_backward(qk, sk, sv, chunks, causal, row_max, row_sum, slot_weights,
                                d_out, out_dot)
    dtype = sk.dtype
    # Blocks holding a row whose only target is its (masked) self need the replaced logits'
    # gradient zeroed explicitly; elsewhere exp() already made those probabilities 0.
    degenerate = (row_max < SELF_MASK_VALUE / 2).any(-1).any(0).nonzero().flatten().tolist()
    # Gradients go straight to the unsorted rows (index_add_ sums a position's rounds).
    d_qk = torch.zeros(qk.shape, dtype=dtype, device=qk.device)
    d_k = torch.zeros_like(d_qk)
    d_v = torch.zeros(d_out.shape, dtype=dtype, device=d_out.device)
    for start, stop in chunks.ranges():
        logits, replaced, q, k = _block_logits(qk, sk, s_locs, chunks, causal, start, stop)
        unnormalised = logits.sub_(row_max[:, start:stop, :, None]).exp_()  # (G, nb, C, WC)
        inv_sum = row_sum[:, start:stop, :, None].reciprocal()  # probs = unnormalised * inv
        w = slot_weights[:, start:stop, :, None]  # (G, nb, C, 1)
        d_o = chunks.sort(d_out, start, stop).mul_(w)  # (G, nb, C, dv)
        row_term = chunks.sort(out_dot, start, stop).mul_(w)  # (G, nb, C, 1)
        block_v = chunks.window(sv, start, stop).to(dtype)  # (G, nb, WC, dv)
        block_d_v = unnormalised.transpose(-1, -2) @ (d_o * inv_sum)  # (G, nb, WC, dv)
        d_logits = (d_o @ block_v.transpose(-1, -2)).sub_(row_term).mul_(unnormalised)
        if any(start <= c < stop for c in degenerate):
            d_logits.masked_fill_(replaced, 0.0)  # replaced logits are constants
        q_rows = chunks.sort_rows[:, start:stop].flatten()
        kv_rows = chunks.window(chunks.sort_rows, start, stop).flatten()
        d_qk.index_add_(0, q_rows, ((d_logits @ k) * inv_sum).view(-1, qk.shape[-1]))
        block_d_k = d_logits.transpose(-1, -2) @ (q * inv_sum)  # (G, nb, WC, dh)
        d_k.index_add_(0, kv_rows, block_d_k.view(-1, qk.shape[-1]))
        d_v.index_add_(0, kv_rows, block_d_v.view(-1, d_v.shape[-1]))
    return d_qk, d_k, d_v


def _kernel_operands(chunks: _Chunks, dtype, *sorted_):
    """[G, nc, C, d] sorted tensors as the kernels take them, [G, N, d] in one dtype: the
    inputs' own for bfloat16 / float16 (float32 accumulation in the kernel), else float32."""
    n_items = chunks.n_chunks * chunks.chunk_len
    return [x.reshape(chunks.groups, n_items, -1).to(dtype).contiguous() for x in sorted_]


def _kernel_dtype(logits, values):
    return values if values in (torch.bfloat16, torch.float16) else logits


def _triton_forward(qk, sk, sv, chunks: _Chunks, causal):
    from attnbench.torch_impl import lsh_triton

    dtype = _kernel_dtype(sk.dtype, sv.dtype)
    q, k, v = _kernel_operands(chunks, dtype, chunks.sort(qk), sk, sv)
    positions = chunks.positions.reshape(q.shape[:2])
    out, row_max, row_sum = lsh_triton.band_forward(q, k, v, positions,
                                                    **chunks.band_args(causal))
    shape = chunks.positions.shape
    return (out.reshape(*shape, -1).to(sk.dtype), row_max.reshape(shape),
            row_sum.reshape(shape))


def _triton_backward(qk, sk, sv, chunks: _Chunks, causal, row_max, row_sum, slot_weights,
                     d_out, out_dot):
    from attnbench.torch_impl import lsh_triton

    dtype = _kernel_dtype(sk.dtype, sv.dtype)
    q, k, v = _kernel_operands(chunks, dtype, chunks.sort(qk), sk, sv)
    (d_o,) = _kernel_operands(chunks, sk.dtype, chunks.sort(d_out) * slot_weights[..., None])
    shape = q.shape[:2]
    delta = (chunks.sort(out_dot)[..., 0] * slot_weights).reshape(shape)
    d_sq, d_sk, d_sv = lsh_triton.band_backward(
        q, k, v, chunks.positions.reshape(shape), row_max.reshape(shape),
        row_sum.reshape(shape), d_o, delta, **chunks.band_args(causal))
    rows = chunks.sort_rows.flatten()
    zeros = torch.zeros(qk.shape, dtype=sk.dtype, device=qk.device)
    return (zeros.index_add(0, rows, d_sq.reshape(-1, qk.shape[-1]).to(sk.dtype)),
            zeros.index_add(0, rows, d_sk.reshape(-1, qk.shape[-1]).to(sk.dtype)),
            torch.zeros(d_out.shape, dtype=sk.dtype, device=qk.device).index_add(
                0, rows, d_sv.reshape(-1, d_out.shape[-1]).to(sk.dtype)))


class _LSHAttentionCore(torch.autograd.Function):
    """Attend within chunk windows of the sorted order, then combine rounds: one autograd node.

    Like flash attention it saves the (sorted) inputs, the combined output and per-row softmax
    statistics, and recomputes probabilities block by block in the backward; no tensor of size
    n_hashes * L * window is ever kept. Inputs qk [G * L, dh], v [G * L, dv], locs
    [G * L, n_hashes] or None. Returns the combined output [G * L, dv].
    """

    @staticmethod
    def forward(ctx, qk, v, locs, chunks: _Chunks, causal, kernel):
        k = normalize_keys(qk)  # (G*L, dh), in the logits dtype
        sk, sv = chunks.sort(k), chunks.sort(v)  # (G, nc, C, d); windows are slices of these
        s_locs = None if locs is None else chunks.sort(locs)
        s_out, row_max, row_sum = _band_forward(qk, sk, sv, s_locs, chunks, causal, kernel)

        # Combine rounds: the weight of round r at position t is softmax_r(lse_r(t)).
        s_lse = (row_max + row_sum.log()).reshape(-1, 1)
        weights = torch.softmax(torch.stack(
            [s_lse.index_select(0, rows.flatten()) for rows in chunks.undo_rows]), dim=0)
        s_out_flat = s_out.view(-1, s_out.shape[-1])
        out = weights[0] * s_out_flat.index_select(0, chunks.undo_rows[0].flatten())
        for r in range(1, chunks.n_hashes):
            out += weights[r] * s_out_flat.index_select(0, chunks.undo_rows[r].flatten())
        slot_weights = weights.view(-1, 1).index_select(0, chunks.weight_rows).view(
            chunks.positions.shape)  # each sorted slot's own round weight
        ctx.save_for_backward(qk, sk, sv, s_locs, out, row_max, row_sum, slot_weights)
        ctx.chunks, ctx.causal, ctx.kernel = chunks, causal, kernel
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, d_out):
        qk, sk, sv, s_locs, out, row_max, row_sum, slot_weights = ctx.saved_tensors
        dtype = sk.dtype
        d_out = d_out.to(dtype)
        out_dot = (d_out * out).sum(-1, keepdim=True)  # (G*L, 1)
        d_qk, d_k, d_v = _band_backward(qk, sk, sv, s_locs, ctx.chunks, ctx.causal, ctx.kernel,
                                        row_max, row_sum, slot_weights, d_out, out_dot)
        d_qk += _normalize_keys_vjp(qk.to(dtype), d_k)
        return d_qk.to(qk.dtype), d_v.to(sv.dtype), None, None, None, None


# --------------------------------------------------------------------------------------------
# 4. The whole layer function
# --------------------------------------------------------------------------------------------


def _check_kernel_args(kernel, qk, v, chunk_len, dedup):
    """A fused kernel that cannot take the call is an error, never a quiet portable run."""
    try:
        from attnbench.torch_impl import lsh_triton
    except ImportError as exc:
        raise RuntimeError(f"kernel={kernel!r} needs the triton package (torch's CUDA builds "
                           f"bring it; pip install triton) [{exc}]") from None
    if dedup:
        raise ValueError(f"dedup=True: kernel {kernel!r} does not count duplicate keys "
                         "(kernel='portable' does)")
    lsh_triton.check_supported(chunk_len=chunk_len, d_head=qk.shape[-1], d_v=v.shape[-1],
                               dtype=_kernel_dtype(logits_dtype(qk), v.dtype))


def _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets, generator):
    check_qkv({"qk": qk, "v": v}, same_d=False)
    checks.check_lsh_args(
        tuple(qk.shape), n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=chunk_len,
        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        rotations_shape=None if rotations is None else tuple(rotations.shape),
        buckets_shape=None if buckets is None else tuple(buckets.shape))
    if generator is not None and generator.device.type != qk.device.type:
        raise ValueError(f"generator.device={generator.device}: must be on qk's device "
                         f"({qk.device})")
    if buckets is not None and (buckets.is_floating_point() or buckets.min() < 0
                                or buckets.max() >= n_buckets):
        raise ValueError(f"buckets: must be integers in [0, n_buckets={n_buckets})")


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, *, n_buckets: int, n_hashes: int,
                  chunk_len: int, causal: bool, rotations: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, n_chunks_before: int = 1,
                  n_chunks_after: int = 0, dedup: bool = False, return_buckets: bool = False,
                  buckets: torch.Tensor | None = None, kernel: str = "auto"):
    """LSH self-attention with shared queries and keys.

    Buckets come from ``buckets`` if given (replay), else from ``rotations`` if given, else from
    rotations drawn from ``generator`` (the global RNG when None: drawn from, never reseeded).
    ``kernel`` runs the band of chunks (``auto``: Triton on CUDA tensors, the portable core on
    the CPU; see :func:`attnbench.spec.resolve_kernel`). Returns the output [B, H, L, dv] (and
    the int32 buckets when ``return_buckets``).
    """
    _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets, generator)
    kernel = resolve_kernel(kernel, "torch", qk.device.type)
    if kernel != "portable":
        _check_kernel_args(kernel, qk, v, chunk_len, dedup)
    batch, heads, length, d_head = qk.shape
    d_v = v.shape[-1]
    if buckets is None:
        if rotations is None:
            rotations = draw_rotations(heads, d_head, n_hashes, n_buckets, generator=generator,
                                       device=qk.device)
        buckets = hash_vectors(qk, rotations)
    sticker, undo = sort_by_bucket(buckets, n_buckets)  # (B, H, n_hashes*L)
    groups = batch * heads
    chunks = _Chunks(sticker.view(groups, -1), undo.view(groups, -1), length, chunk_len,
                     n_chunks_before, n_chunks_after)
    locs = None
    if dedup:  # the chunk of every position in every round: (G*L, n_hashes)
        locs = (undo // chunk_len).view(groups, n_hashes, length).transpose(1, 2)
        locs = locs.reshape(groups * length, n_hashes)
    out = _LSHAttentionCore.apply(qk.reshape(groups * length, d_head),
                                  v.reshape(groups * length, d_v), locs, chunks, causal, kernel)
    out = out.view(batch, heads, length, d_v)
    return (out, buckets) if return_buckets else out


class LSHSelfAttention(SharedQKSelfAttention):
    """Shared-QK projection, LSH attention, output projection (parameters as shared-QK's)."""

    def __init__(self, d_model: int, spec: AttentionSpec, *, device=None, dtype=None):
        if spec.kind != "lsh":
            raise ValueError(f"AttentionSpec.kind={spec.kind!r}: LSHSelfAttention needs 'lsh'")
        super().__init__(d_model, spec, device=device, dtype=dtype)

    def attend(self, qk, v, *, generator, buckets):
        spec = self.spec
        return lsh_attention(
            qk, v, n_buckets=spec.buckets_for(qk.shape[2]), n_hashes=spec.n_hashes,
            chunk_len=spec.chunk_len, causal=spec.causal, generator=generator,
            n_chunks_before=spec.n_chunks_before, n_chunks_after=spec.n_chunks_after,
            dedup=spec.dedup, return_buckets=True, buckets=buckets, kernel=spec.kernel)
