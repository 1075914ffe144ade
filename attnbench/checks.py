"""Input checks shared by both frameworks: they see only shapes and flags, so torch and JAX
raise the same ValueError (naming the value and the rule) before any kernel runs or any tracing
starts."""

from __future__ import annotations

from collections.abc import Mapping

Shape = tuple[int, ...]


def check_qkv(tensors: Mapping[str, tuple[Shape, bool]], *, same_d: bool) -> None:
    """``tensors``: name -> (shape, is_floating_point). All must be [batch, heads, length, d] with
    equal batch, heads and length (and equal d when ``same_d``)."""
    first_name, (first, _) = next(iter(tensors.items()))
    for name, (shape, is_float) in tensors.items():
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(f"{name}.shape={shape}: must be [batch, heads, length, d]")
        if shape[:3] != tuple(first[:3]):
            raise ValueError(f"{name}.shape={shape}: batch, heads and length must match "
                             f"{first_name}.shape={tuple(first)}")
        if same_d and shape[3] != first[3]:
            raise ValueError(f"{name}.shape={shape}: d_head must match "
                             f"{first_name}.shape={tuple(first)}")
        if not is_float:
            raise ValueError(f"{name}: must be a floating-point array")


def check_lsh_args(qk_shape: Shape, *, n_buckets, n_hashes, chunk_len, n_chunks_before,
                   n_chunks_after, rotations_shape: Shape | None,
                   buckets_shape: Shape | None) -> None:
    """The LSH settings and the shapes of injected rotations / buckets."""
    batch, heads, length, d_head = qk_shape
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
    if rotations_shape is not None:
        expected = (heads, d_head, n_hashes, n_buckets // 2)
        if tuple(rotations_shape) != expected:
            raise ValueError(f"rotations.shape={tuple(rotations_shape)}: must be [heads, d_head, "
                             f"n_hashes, n_buckets // 2] = {expected}")
    if buckets_shape is not None:
        expected = (batch, heads, n_hashes, length)
        if tuple(buckets_shape) != expected:
            raise ValueError(f"buckets.shape={tuple(buckets_shape)}: must be [batch, heads, "
                             f"n_hashes, length] = {expected}")


def check_local_args(length: int, chunk_len) -> None:
    """Local attention's window: ``chunk_len`` a positive int dividing the length."""
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_len={chunk_len!r}: must be an int >= 1")
    if length % chunk_len:
        raise ValueError(f"length={length}: must be a multiple of chunk_len={chunk_len} "
                         "(local attention cuts the length into whole chunks)")
