"""LSH attention (Reformer): hash, sort by bucket, attend within chunks, unsort, combine rounds.

Reads top to bottom as the algorithm (ARCHITECTURE §2). Shapes: qk [B, H, L, dh], v [B, H, L, dv],
rotations [H, dh, n_hashes, n_buckets // 2], buckets [B, H, n_hashes, L] (int32, no round offset).
The chunked attention core is a custom autograd function that saves only its inputs, outputs and
log-sum-exps and recomputes probabilities block by block in the backward, so memory grows with
``n_hashes * L`` and never with ``L * chunk_len`` all at once.
"""

from __future__ import annotations

import math

import torch

from attnbench.spec import AttentionSpec
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
_BLOCK_ELEMENTS = 1 << 21


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
    for r in range(rotations.shape[2]):
        rotation = rotations[:, :, r].to(dtype)
        rotated = torch.einsum("bhld,hdk->bhlk", qk, rotation)  # (B, H, L, nb/2)
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


class _Blocks:
    """Index plumbing from sorted slots to rows of the unsorted [G * L, d] inputs.

    Slot s of group g holds position ``sticker[g, s] % L``; slots are cut into chunks of
    ``chunk_len`` and each chunk sees itself plus ``n_before`` / ``n_after`` neighbours, wrapping
    around the concatenated rounds (the first chunk looks back at the last one). Nothing sorted is
    ever materialised: each block of chunks gathers its own query and key/value rows.
    """

    def __init__(self, sticker, undo, length, chunk_len, n_before, n_after):
        groups, n_items = sticker.shape
        self.groups, self.length, self.chunk_len = groups, length, chunk_len
        self.n_hashes = n_items // length
        self.n_chunks = n_items // chunk_len
        self.offsets = torch.arange(-n_before, n_after + 1, device=sticker.device)
        self.positions = (sticker % length).view(groups, self.n_chunks, chunk_len)
        base = torch.arange(groups, device=sticker.device).view(-1, 1, 1) * length
        self.rows = self.positions + base  # row of each slot in the [G * L, d] inputs
        # sorted slot of (round r, position t), as a row of the flattened sorted tensors
        self.undo_rows = (undo + torch.arange(groups, device=undo.device)[:, None] * n_items
                          ).view(groups, self.n_hashes, length).transpose(0, 1)  # (R, G, L)

    @property
    def width(self) -> int:
        return len(self.offsets)

    def ranges(self):
        """Blocks of whole chunks whose logits hold about _BLOCK_ELEMENTS numbers."""
        per_chunk = self.groups * self.chunk_len * self.chunk_len * self.width
        step = max(1, _BLOCK_ELEMENTS // per_chunk)
        for start in range(0, self.n_chunks, step):
            yield start, min(start + step, self.n_chunks)

    def window(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, W] indices of the chunks each chunk in [start, stop) sees."""
        chunks = torch.arange(start, stop, device=self.offsets.device)
        return (chunks[:, None] + self.offsets[None, :]) % self.n_chunks

    def shifted(self, start: int, stop: int, offset: int):
        """(target, source) slice pairs: chunk start + i + offset (mod n_chunks) is target for
        source i of the block; at most two pairs, split where the target range wraps."""
        first = (start + offset) % self.n_chunks
        size = stop - start
        head = min(size, self.n_chunks - first)
        yield slice(first, first + head), slice(0, head)
        if head < size:
            yield slice(0, size - head), slice(head, size)

    def unsort(self, x_sorted: torch.Tensor) -> torch.Tensor:
        """[G, n_chunks, C, d] in sorted order -> [G * L, d], summing each position's rounds."""
        flat = x_sorted.reshape(-1, x_sorted.shape[-1])
        total = None
        for r in range(self.n_hashes):
            part = flat.index_select(0, self.undo_rows[r].flatten())
            total = part if total is None else total.add_(part)
        return total

    def query_rows(self, start, stop):
        return self.rows[:, start:stop], self.positions[:, start:stop]  # (G, nb, C)

    def key_rows(self, window):
        """Rows and positions of each chunk's keys, window-major: (G, nb, W * C)."""
        shape = (self.groups, window.shape[0], -1)
        return self.rows[:, window].reshape(shape), self.positions[:, window].reshape(shape)


def _take(x_flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of x_flat [G * L, d] for an index of any shape -> [*rows.shape, d]."""
    return x_flat.index_select(0, rows.flatten()).view(*rows.shape, x_flat.shape[-1])


def _dedup_log_counts(q_locs, kv_locs, blocks: _Blocks, dtype) -> torch.Tensor:
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
            for offset in blocks.offsets.tolist():
                counts += torch.remainder(diff - offset, blocks.n_chunks) == 0
    return counts.log_()


def _block_logits(qk_flat, k_flat, locs, blocks: _Blocks, causal, start, stop):
    """Recomputable part of one block of chunks: masked logits (in k's dtype, the logits
    dtype), the replaced-logit mask, the window, the rows, and the block's queries and keys."""
    window = blocks.window(start, stop)
    q_rows, q_pos = blocks.query_rows(start, stop)  # (G, nb, C)
    kv_rows, kv_pos = blocks.key_rows(window)  # (G, nb, WC)
    q = _take(qk_flat, q_rows).to(k_flat.dtype)  # (G, nb, C, dh)
    k = _take(k_flat, kv_rows)  # (G, nb, WC, dh)
    logits = q @ k.transpose(-1, -2)  # (G, nb, C, WC)
    replaced = q_pos[..., :, None] == kv_pos[..., None, :]
    logits.masked_fill_(replaced, SELF_MASK_VALUE)
    if causal:
        future = q_pos[..., :, None] < kv_pos[..., None, :]
        logits.masked_fill_(future, MASK_VALUE)
        replaced |= future
    if locs is not None:
        n_hashes = locs.shape[-1]
        q_locs = locs.index_select(0, q_rows.flatten()).view(*q_rows.shape, n_hashes)
        kv_locs = locs.index_select(0, kv_rows.flatten()).view(*kv_rows.shape, n_hashes)
        logits -= _dedup_log_counts(q_locs, kv_locs, blocks, logits.dtype)
    return logits, replaced, q_rows, kv_rows, q, k


def _normalize_keys_vjp(qk: torch.Tensor, d_k: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`normalize_keys` (k = q * r / sqrt(d), r = rsqrt(mean(q^2) + eps))."""
    d = qk.shape[-1]
    r = torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + KEY_NORM_EPS)
    dot = (d_k * qk).sum(-1, keepdim=True)
    return (d_k * r - qk * (r.pow(3) * dot / d)) / math.sqrt(d)


class _LSHAttentionCore(torch.autograd.Function):
    """Attend within chunk windows of the sorted order, then combine rounds: one autograd node.

    Like flash attention it saves only the inputs, the combined output and per-row softmax
    statistics, and recomputes probabilities block by block in the backward; nothing of size
    n_hashes * L * window is ever kept. Inputs qk [G * L, dh], v [G * L, dv], sticker [G, N]
    (N = n_hashes * L), locs [G * L, n_hashes] or None. Returns the output [G * L, dv].
    """

    @staticmethod
    def forward(ctx, qk, v, sticker, locs, blocks: _Blocks, causal):
        groups, length = blocks.groups, blocks.length
        n_hashes = sticker.shape[1] // length
        k = normalize_keys(qk)  # (G*L, dh), in the logits dtype
        dtype = k.dtype
        # Each round's output and log-sum-exp, written straight to unsorted slots r * L + t.
        unsorted_slot = (sticker + torch.arange(groups, device=v.device)[:, None]
                         * sticker.shape[1]).view(groups, blocks.n_chunks, -1)
        round_out = torch.empty(groups * n_hashes * length, v.shape[-1], dtype=dtype,
                                device=v.device)
        round_lse = torch.empty(groups * n_hashes * length, dtype=dtype, device=v.device)
        row_max = torch.empty(blocks.positions.shape, dtype=dtype, device=v.device)
        row_sum = torch.empty_like(row_max)
        for start, stop in blocks.ranges():
            logits, _, _, kv_rows, _, _ = _block_logits(qk, k, locs, blocks, causal, start, stop)
            # Max and sum stay apart: a row whose only target is the masked self has logits
            # near -1e5, where float32 cannot hold logit - logsumexp to better than 1e-2.
            block_max = logits.amax(-1, keepdim=True)  # (G, nb, C, 1)
            unnormalised = logits.sub_(block_max).exp_()
            block_sum = unnormalised.sum(-1, keepdim=True)
            block_v = _take(v, kv_rows)  # (G, nb, WC, dv)
            block_out = (unnormalised.to(v.dtype) @ block_v).to(dtype) / block_sum
            slots = unsorted_slot[:, start:stop].flatten()
            round_out.index_copy_(0, slots, block_out.view(-1, v.shape[-1]))
            round_lse.index_copy_(0, slots, (block_max + block_sum.log()).flatten())
            row_max[:, start:stop], row_sum[:, start:stop] = block_max[..., 0], block_sum[..., 0]

        # Combine rounds: the weight of round r at position t is softmax_r(lse_r(t)).
        weights = torch.softmax(round_lse.view(groups, n_hashes, length), dim=1)
        round_out = round_out.view(groups, n_hashes, length, -1)
        out = weights[:, 0, :, None] * round_out[:, 0]
        for r in range(1, n_hashes):
            out += weights[:, r, :, None] * round_out[:, r]
        out = out.view(groups * length, -1)
        slot_weights = weights.view(groups, -1).gather(1, sticker).view(blocks.positions.shape)
        ctx.save_for_backward(qk, k, v, sticker, locs, out, row_max, row_sum, slot_weights)
        ctx.blocks, ctx.causal = blocks, causal
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, d_out):
        qk, k, v, sticker, locs, out, row_max, row_sum, slot_weights = ctx.saved_tensors
        blocks, dtype = ctx.blocks, k.dtype
        d_out = d_out.to(dtype)
        # Per slot: d(round output) = w * d_out[t], and the softmax row term
        # sum_j p_ij dp_ij - d_lse_i collapses to w * (d_out[t] . out[t]).
        out_dot = (d_out * out).sum(-1, keepdim=True)  # (G*L, 1)
        # Gradients accumulate in sorted chunk order, where a window is a slice of whole chunks.
        sorted_shape = (*blocks.positions.shape, -1)
        d_sq = torch.empty(sorted_shape[:3] + (qk.shape[-1],), dtype=dtype, device=qk.device)
        d_sk = torch.zeros_like(d_sq)
        d_sv = torch.zeros(sorted_shape[:3] + (v.shape[-1],), dtype=dtype, device=v.device)
        for start, stop in blocks.ranges():
            logits, replaced, q_rows, kv_rows, q, k_block = _block_logits(
                qk, k, locs, blocks, ctx.causal, start, stop)
            unnormalised = logits.sub_(row_max[:, start:stop, :, None]).exp_()  # (G, nb, C, WC)
            inv_sum = row_sum[:, start:stop, :, None].reciprocal()  # probs = unnormalised * inv
            w = slot_weights[:, start:stop, :, None]
            d_o = _take(d_out, q_rows) * w  # (G, nb, C, dv)
            row_term = _take(out_dot, q_rows) * w  # (G, nb, C, 1)
            block_v = _take(v, kv_rows).to(dtype)  # (G, nb, WC, dv)
            block_d_v = unnormalised.transpose(-1, -2) @ (d_o * inv_sum)  # (G, nb, WC, dv)
            d_logits = (d_o @ block_v.transpose(-1, -2)).sub_(row_term)
            d_logits.mul_(unnormalised).masked_fill_(replaced, 0.0)  # replaced: constants
            d_sq[:, start:stop] = (d_logits @ k_block) * inv_sum
            block_d_k = d_logits.transpose(-1, -2) @ (q * inv_sum)  # (G, nb, WC, dh)
            n_block = stop - start
            block_d_k = block_d_k.view(blocks.groups, n_block, blocks.width, blocks.chunk_len, -1)
            block_d_v = block_d_v.view(blocks.groups, n_block, blocks.width, blocks.chunk_len, -1)
            for w_index, offset in enumerate(blocks.offsets.tolist()):
                for target, source in blocks.shifted(start, stop, offset):
                    d_sk[:, target] += block_d_k[:, source, w_index]
                    d_sv[:, target] += block_d_v[:, source, w_index]
        d_qk = blocks.unsort(d_sq) + _normalize_keys_vjp(qk.to(dtype), blocks.unsort(d_sk))
        return d_qk.to(qk.dtype), blocks.unsort(d_sv).to(v.dtype), None, None, None, None


# --------------------------------------------------------------------------------------------
# 4. The whole layer function
# --------------------------------------------------------------------------------------------


def _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets):
    check_qkv({"qk": qk, "v": v}, same_d=False)
    batch, heads, length, d_head = qk.shape
    for name, value, minimum in (("n_hashes", n_hashes, 1), ("chunk_len", chunk_len, 1),
                                 ("n_buckets", n_buckets, 2),
                                 ("n_chunks_before", n_chunks_before, 0),
                                 ("n_chunks_after", n_chunks_after, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r}: must be an int >= {minimum}")
    if n_buckets % 2:
        raise ValueError(f"n_buckets={n_buckets}: must be even (buckets come in +/- pairs)")
    if length % chunk_len:
        raise ValueError(f"length={length}: must be a multiple of chunk_len={chunk_len} "
                         "(LSH attention never falls back to full attention)")
    if rotations is not None:
        expected = (heads, d_head, n_hashes, n_buckets // 2)
        if tuple(rotations.shape) != expected:
            raise ValueError(f"rotations.shape={tuple(rotations.shape)}: must be [heads, d_head, "
                             f"n_hashes, n_buckets // 2] = {expected}")
    if buckets is not None:
        expected = (batch, heads, n_hashes, length)
        if tuple(buckets.shape) != expected:
            raise ValueError(f"buckets.shape={tuple(buckets.shape)}: must be [batch, heads, "
                             f"n_hashes, length] = {expected}")
        if buckets.is_floating_point() or buckets.min() < 0 or buckets.max() >= n_buckets:
            raise ValueError(f"buckets: must be integers in [0, n_buckets={n_buckets})")


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, *, n_buckets: int, n_hashes: int,
                  chunk_len: int, causal: bool, rotations: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, n_chunks_before: int = 1,
                  n_chunks_after: int = 0, dedup: bool = False, return_buckets: bool = False,
                  buckets: torch.Tensor | None = None):
    """LSH self-attention with shared queries and keys.

    Buckets come from ``buckets`` if given (replay), else from ``rotations`` if given, else from
    rotations drawn from ``generator`` (the global RNG when None: drawn from, never reseeded).
    Returns the output [B, H, L, dv] (and the int32 buckets when ``return_buckets``).
    """
    _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets)
    batch, heads, length, d_head = qk.shape
    d_v = v.shape[-1]
    if buckets is None:
        if rotations is None:
            rotations = draw_rotations(heads, d_head, n_hashes, n_buckets, generator=generator,
                                       device=qk.device)
        buckets = hash_vectors(qk, rotations)
    sticker, undo = sort_by_bucket(buckets, n_buckets)  # (B, H, n_hashes*L)
    groups = batch * heads
    locs = None
    if dedup:  # chunk of every position in every round: (G*L, n_hashes)
        locs = (undo // chunk_len).view(groups, n_hashes, length).transpose(1, 2)
        locs = locs.reshape(groups * length, n_hashes)
    blocks = _Blocks(sticker.view(groups, -1), undo.view(groups, -1), length, chunk_len,
                     n_chunks_before, n_chunks_after)
    out = _LSHAttentionCore.apply(qk.reshape(groups * length, d_head),
                                  v.reshape(groups * length, d_v), sticker.view(groups, -1), locs,
                                  blocks, causal)
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
            dedup=spec.dedup, return_buckets=True, buckets=buckets)
