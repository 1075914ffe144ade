"""Frozen, validated specifications of every attention variant and model ablation.

A spec is a value: hashable, comparable, printable, and checked when it is built. A bad field
raises ``ValueError`` naming the field, the value and the rule, so no shape error ever surfaces
from deep inside a framework. Both frameworks build their layers and models from these specs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

ATTENTION_KINDS = ("full", "shared_qk", "lsh", "custom")
FULL_IMPLS = ("naive", "fused")
ACTIVATIONS = ("relu", "gelu")
POSITION_KINDS = ("learned", "axial", "none")
# The LSH core's band of chunks: ``portable`` (framework ops, any device), ``triton`` (torch on
# CUDA), ``pallas`` (JAX on GPU); ``auto`` is the framework's GPU kernel on a GPU, else portable.
LSH_KERNELS = ("auto", "portable", "triton", "pallas")
FRAMEWORK_KERNELS = {"torch": ("portable", "triton"), "jax": ("portable", "pallas")}


def _fail(owner: str | None, name: str, value: object, rule: str) -> None:
    field_name = name if owner is None else f"{owner}.{name}"
    raise ValueError(f"{field_name}={value!r}: {rule}")


def _check_int(owner: str | None, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(owner, name, value, "must be an int")
    if value < minimum:
        _fail(owner, name, value, f"must be >= {minimum}")


def _check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(owner, name, value, f"must be one of {', '.join(choices)}")


def _check_rate(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        _fail(owner, name, value, "must be a number in [0, 1)")


def resolve_kernel(kernel: str, framework: str, platform: str) -> str:
    """The LSH kernel that runs: ``auto`` is the framework's fused GPU kernel off the CPU and
    the portable core on it; an explicit kernel must belong to the framework (never swapped)."""
    _check_choice("AttentionSpec", "kernel", kernel, LSH_KERNELS)
    own = FRAMEWORK_KERNELS[framework]
    if kernel == "auto":
        return "portable" if platform == "cpu" else own[1]
    if kernel not in own:
        _fail("AttentionSpec", "kernel", kernel, f"must be auto or a {framework} kernel "
              f"({', '.join(own)})")
    return kernel


def default_n_buckets(length: int, chunk_len: int) -> int:
    """The paper's bucket count, ``2 * length / chunk_len`` (even by construction).

    A pure function of the shapes: it never mutates a spec (the transformers trap, where the
    first length seen fixes the bucket count for every later call).
    """
    return max(2, 2 * (length // chunk_len))


@dataclass(frozen=True)
class AttentionSpec:
    """One self-attention layer.

    kind: ``full`` (separate Q and K, softmax(QK^T/sqrt(d))V), ``shared_qk`` (exact attention
    with the Reformer's shared, normalised keys and self-mask), ``lsh`` (the Reformer's
    locality-sensitive-hashing approximation of ``shared_qk``) or ``custom`` (a function
    registered with :func:`attnbench.variants.register_attention`, named by ``custom``).
    impl: for ``full`` only, ``naive`` (materialised L x L matrix) or ``fused`` (the framework's
    fused kernel).
    n_buckets: ``None`` means :func:`default_n_buckets` of the call's length.
    kernel: for ``lsh`` only, which implementation runs the band of chunks (``LSH_KERNELS``;
    :func:`resolve_kernel` says what ``auto`` becomes).
    """

    kind: str = "lsh"
    n_heads: int = 4
    causal: bool = False
    impl: str = "naive"
    n_hashes: int = 1
    n_buckets: int | None = None
    chunk_len: int = 64
    n_chunks_before: int = 1
    n_chunks_after: int = 0
    dedup: bool = False
    kernel: str = "auto"
    custom: str | None = None   # kind "custom": the registered attention's name
    # kind "custom": None gives the projections the attention was registered with; True gives
    # the shared query-key projection (k = q) whatever it was (a task's models share it).
    shared_qk: bool | None = None

    def __post_init__(self) -> None:
        owner = "AttentionSpec"
        _check_choice(owner, "kind", self.kind, ATTENTION_KINDS)
        if (self.kind == "custom") != (isinstance(self.custom, str) and bool(self.custom)):
            _fail(owner, "custom", self.custom, "the registered attention's name, with kind "
                  "'custom' only")
        if self.shared_qk is not None and (self.kind != "custom"
                                           or not isinstance(self.shared_qk, bool)):
            _fail(owner, "shared_qk", self.shared_qk, "None, or a bool with kind 'custom' only")
        _check_int(owner, "n_heads", self.n_heads, 1)
        if not isinstance(self.causal, bool):
            _fail(owner, "causal", self.causal, "must be a bool")
        _check_choice(owner, "impl", self.impl, FULL_IMPLS)
        _check_int(owner, "n_hashes", self.n_hashes, 1)
        if self.n_buckets is not None:
            _check_int(owner, "n_buckets", self.n_buckets, 2)
            if self.n_buckets % 2:
                _fail(owner, "n_buckets", self.n_buckets,
                      "must be even (buckets come in +/- pairs)")
        _check_int(owner, "chunk_len", self.chunk_len, 1)
        _check_int(owner, "n_chunks_before", self.n_chunks_before, 0)
        _check_int(owner, "n_chunks_after", self.n_chunks_after, 0)
        if not isinstance(self.dedup, bool):
            _fail(owner, "dedup", self.dedup, "must be a bool")
        _check_choice(owner, "kernel", self.kernel, LSH_KERNELS)
        if self.causal and self.n_chunks_after:
            _fail(owner, "n_chunks_after", self.n_chunks_after,
                  "must be 0 when causal (look-ahead chunks would be fully masked)")

    def check_d_model(self, d_model: int) -> int:
        """Validate ``d_model`` against the head count and return ``d_head``."""
        _check_int(None, "d_model", d_model, 1)
        if d_model % self.n_heads:
            _fail(None, "d_model", d_model,
                  f"must be divisible by AttentionSpec.n_heads={self.n_heads}")
        return d_model // self.n_heads

    def check_length(self, length: int) -> None:
        """Validate a sequence length for this layer (LSH needs whole chunks)."""
        _check_int(None, "length", length, 1)
        if self.kind == "lsh" and length % self.chunk_len:
            _fail(None, "length", length,
                  f"must be a multiple of AttentionSpec.chunk_len={self.chunk_len}")

    def buckets_for(self, length: int) -> int:
        """The bucket count used at ``length``."""
        if self.n_buckets is not None:
            return self.n_buckets
        return default_n_buckets(length, self.chunk_len)


@dataclass(frozen=True)
class FeedForwardSpec:
    """Position-wise feed-forward: Linear(d_model, d_ff) -> activation -> Linear(d_ff, d_model).

    chunk_len: ``None`` runs all positions at once; an int runs forward *and* backward over that
    many positions at a time (recomputing each chunk in the backward).
    """

    d_ff: int = 1024
    activation: str = "gelu"
    chunk_len: int | None = None

    def __post_init__(self) -> None:
        owner = "FeedForwardSpec"
        _check_int(owner, "d_ff", self.d_ff, 1)
        _check_choice(owner, "activation", self.activation, ACTIVATIONS)
        if self.chunk_len is not None:
            _check_int(owner, "chunk_len", self.chunk_len, 1)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-style language model: embedding + positions, a residual stack, LayerNorm, head.

    reversible: a RevNet stack (``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``) whose backward
    reconstructs activations; otherwise a plain pre-norm residual stack.
    positions: ``learned`` absolute embeddings of ``max_len`` positions, ``axial`` embeddings of
    ``axial_shape`` (one table per axis, ``axial_dims`` concatenated; they must sum to d_model)
    or ``none``.
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 2
    max_len: int = 1024
    attention: AttentionSpec = field(default_factory=AttentionSpec)
    feed_forward: FeedForwardSpec = field(default_factory=FeedForwardSpec)
    reversible: bool = True
    dropout: float = 0.0
    positions: str = "learned"
    axial_shape: tuple[int, ...] = ()
    axial_dims: tuple[int, ...] = ()
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        owner = "ModelSpec"
        _check_int(owner, "vocab_size", self.vocab_size, 1)
        _check_int(owner, "d_model", self.d_model, 1)
        _check_int(owner, "n_layers", self.n_layers, 1)
        _check_int(owner, "max_len", self.max_len, 1)
        if not isinstance(self.attention, AttentionSpec):
            _fail(owner, "attention", self.attention, "must be an AttentionSpec")
        if not isinstance(self.feed_forward, FeedForwardSpec):
            _fail(owner, "feed_forward", self.feed_forward, "must be a FeedForwardSpec")
        if self.d_model % self.attention.n_heads:
            _fail(owner, "d_model", self.d_model,
                  f"must be divisible by attention.n_heads={self.attention.n_heads}")
        if not isinstance(self.reversible, bool):
            _fail(owner, "reversible", self.reversible, "must be a bool")
        _check_rate(owner, "dropout", self.dropout)
        _check_choice(owner, "positions", self.positions, POSITION_KINDS)
        if self.positions == "axial":
            self._check_axial()
        elif self.axial_shape or self.axial_dims:
            _fail(owner, "axial_shape", self.axial_shape, "is only used with positions='axial'")
        if self.tie_embeddings and self.reversible:
            _fail(owner, "tie_embeddings", self.tie_embeddings,
                  "needs reversible=False (the reversible head reads 2*d_model features)")
        if self.attention.kind == "lsh":
            self.attention.check_length(self.max_len)

    def _check_axial(self) -> None:
        owner = "ModelSpec"
        if not self.axial_shape or any(not isinstance(n, int) or n < 1 for n in self.axial_shape):
            _fail(owner, "axial_shape", self.axial_shape, "must be a non-empty tuple of ints >= 1")
        if math.prod(self.axial_shape) != self.max_len:
            _fail(owner, "axial_shape", self.axial_shape,
                  f"must multiply to max_len={self.max_len}")
        if len(self.axial_dims) != len(self.axial_shape):
            _fail(owner, "axial_dims", self.axial_dims,
                  f"must give one width per axis of axial_shape={self.axial_shape}")
        if any(not isinstance(d, int) or d < 1 for d in self.axial_dims):
            _fail(owner, "axial_dims", self.axial_dims, "must be ints >= 1")
        if sum(self.axial_dims) != self.d_model:
            _fail(owner, "axial_dims", self.axial_dims,
                  f"must sum to d_model={self.d_model} (axis embeddings are concatenated)")

    @property
    def d_head(self) -> int:
        return self.d_model // self.attention.n_heads

    def check_length(self, length: int) -> None:
        """Validate an input length against positions and attention."""
        _check_int(None, "length", length, 1)
        if self.positions != "none" and length > self.max_len:
            _fail(None, "length", length, f"must be <= ModelSpec.max_len={self.max_len}")
        self.attention.check_length(length)

    def replace(self, **changes: object) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    @classmethod
    def reformer(cls, **changes: object) -> ModelSpec:
        """The Reformer: causal LSH attention, reversible stack, chunked feed-forward."""
        base = cls(
            attention=AttentionSpec(kind="lsh", causal=True, n_hashes=2),
            feed_forward=FeedForwardSpec(chunk_len=64),
            reversible=True,
        )
        return dataclasses.replace(base, **changes)

    @classmethod
    def transformer(cls, **changes: object) -> ModelSpec:
        """The baseline: causal full attention, plain residual stack, unchunked feed-forward."""
        base = cls(
            attention=AttentionSpec(kind="full", causal=True, impl="fused"),
            feed_forward=FeedForwardSpec(chunk_len=None),
            reversible=False,
        )
        return dataclasses.replace(base, **changes)
