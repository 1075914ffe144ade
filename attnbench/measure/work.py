"""Work accounting: model FLOPs per step from a stated formula, and the paper's analytic
memory estimate, for every variant.

FLOPs are *model* FLOPs (a multiply-add counts 2): the work the variant's maths needs, not
what the hardware did. Recomputation (reversible backward, checkpointed feed-forward chunks)
is not counted, as in the usual MFU convention; the backward counts 2x the forward. LSH is
not a dense formula: each query attends to ``n_hashes * chunk_len * window`` keys, and the
hashing is a ``d_head x n_buckets/2`` rotation per head and round. Causal masking is not
halved for the dense variants (the naive path computes the whole matrix). Every formula is
returned as text (``flop_formula``) beside its value. A registered attention (kind ``custom``)
has neither: its FLOPs and analytic memory are recorded as null, never guessed.

The analytic memory estimate is the dominant term of the paper's Tables 1 and 3 (activations
in elements times the dtype's size), with the LSH term ``b*n_h*n_r*n*c*w`` using this
implementation's window ``c*w`` (chunk length times chunks looked at). It predicts scaling,
not bytes: constant factors (Q, K, V, gradients, framework overheads) are left out on purpose.
"""

from __future__ import annotations

from attnbench.units import MB

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BACKWARD_FACTOR = {"forward": 1, "forward-backward": 3, "train-step": 3}


def _attention_flops(kind: str, b: int, n: int, d: int, case) -> tuple[float, str]:
    if kind == "lsh":
        window = 2  # the chunk itself and one chunk before (n_chunks_before=1, after=0)
        c = case.chunk_len
        r = case.n_hashes
        hashing = 2 * b * n * d * (case.n_buckets // 2) * r
        attend = 4 * b * n * r * c * window * d
        return 6 * b * n * d * d + hashing + attend, \
            "6bld^2 + 2bld(n_buckets/2)r + 4blr(c*2)d"
    proj = 6 if kind == "shared_qk" else 8
    return proj * b * n * d * d + 4 * b * n * n * d, f"{proj}bld^2 + 4bl^2d"


def flops(case, attention_kind: str, model: bool, reversible: bool
          ) -> tuple[float | None, str]:
    """Model FLOPs of one step of ``case`` and the formula, per ``case.mode``; None for a
    registered attention (``custom``), whose work attnbench cannot know."""
    if attention_kind == "custom":
        return None, "unknown (a registered attention states no formula)"
    b, n, d = case.batch, case.length, case.d_model
    attn, formula = _attention_flops(attention_kind, b, n, d, case)
    if model:
        ff = 4 * b * n * d * case.d_ff
        width = 2 * d if reversible else d
        head = 2 * b * n * width * case.vocab_size
        total = case.depth * (attn + ff) + head
        formula = f"depth*({formula} + 4bld*d_ff) + 2bl*width*vocab"
    else:
        total = attn
    factor = BACKWARD_FACTOR[case.mode]
    if factor != 1:
        formula = f"{factor}*({formula})"
    return float(factor * total), formula


def analytic_memory_mb(case, attention_kind: str, model: bool, reversible: bool,
                       chunked_ff: bool) -> float | None:
    """The dominant term of the paper's memory complexity (Tables 1 and 3), in MiB; None for
    a registered attention (``custom``)."""
    if attention_kind == "custom":
        return None
    b, n, h, d = case.batch, case.length, case.n_heads, case.d_model
    d_k = d // h
    if attention_kind == "lsh":
        attn = max(b * h * n * d_k, b * h * case.n_hashes * n * case.chunk_len * 2)
    else:
        attn = max(b * h * n * d_k, b * h * n * n)
    if model:
        ff = b * n * (d if chunked_ff else case.d_ff)
        per_layer = max(ff, attn)
        elements = per_layer if reversible else per_layer * case.depth
    else:
        elements = attn
    return elements * BYTES[case.dtype] / MB


def work_metrics(case, variant, median_s: float) -> dict:
    """The work metrics of a timed case whose step took ``median_s``: tokens per second,
    FLOPs and their formula and rate, and the analytic memory (the worker's and the pytest
    plugin's one source)."""
    from attnbench.variants import attention_kind

    kind, model = attention_kind(variant, case), variant.kind == "model"
    total, formula = flops(case, kind, model, variant.reversible)
    return {
        "tokens_per_s": case.tokens / median_s if median_s > 0 else None,
        "time_per_token_s": median_s / case.tokens,
        "flops": total,
        "flop_formula": formula,
        "flop_per_s": total / median_s if total is not None and median_s > 0 else None,
        "mem_analytic_mb": analytic_memory_mb(case, kind, model, variant.reversible,
                                              variant.chunked_ff),
    }
