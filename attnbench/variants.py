"""The variant registry: every name a suite can ask for, what it is, where it exists.

A *layer* variant is one self-attention layer on a float input ``[batch, length, d_model]``;
a *model* variant is a whole language model (embedding, ``depth`` blocks, head) on tokens.
The model variants are the Reformer, the Transformer and the ablations between them: each
of the Reformer's three parts (LSH attention, reversible stack, chunked feed-forward) on its
own and in pairs, so a sweep can say what each part buys.

``attention_spec`` and ``model_spec`` turn a variant plus a :class:`~attnbench.runner.case.Case`
into the frozen specs both frameworks build from, so torch and JAX measure the same thing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.checks import check_local_args
from attnbench.spec import AttentionSpec, FeedForwardSpec, ModelSpec

LAYER_MODES = ("forward", "forward-backward", "approx")
MODEL_MODES = ("forward", "forward-backward", "train-step", "task")
# What a plugin layer (another library's module) can be measured in: its own forward and
# backward. approx compares attnbench's LSH core with exact attention, which a plugin is not.
PLUGIN_MODES = ("forward", "forward-backward")


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    kind: str                 # "layer" or "model"
    attention: str            # AttentionSpec.kind: full | shared_qk | lsh
    impl: str = "naive"       # full attention: naive | fused
    reversible: bool = False  # model variants
    chunked_ff: bool = False  # model variants
    frameworks: tuple[str, ...] = ("torch", "jax")
    # Plugin layers (another library's attention): build(case, device=, dtype=) -> nn.Module
    # taking x [batch, length, d_model] to y; torch only.
    build: Callable | None = None

    @property
    def hashed(self) -> bool:
        return self.attention == "lsh"

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this variant implements; a suite asking for another is rejected."""
        if self.build is not None:
            return PLUGIN_MODES
        if self.attention == "custom":
            return LAYER_MODES
        if self.kind == "layer":
            return LAYER_MODES if self.hashed else ("forward", "forward-backward")
        return MODEL_MODES


@dataclass(frozen=True)
class Attention:
    """An attention function registered by name (:func:`register_attention`): the contract a
    researcher's own attention follows to be measured in every mode beside the built-ins.

    ``torch(q, k, v, *, causal, generator)`` and ``jax(q, k, v, *, causal, key)`` take
    ``q, k: [batch, heads, length, d_head]`` and ``v: [batch, heads, length, d_v]`` and return
    ``out`` shaped, typed and placed like ``v``. Randomness comes only from ``generator`` (a
    ``torch.Generator`` or None) or ``key`` (a ``jax.Array`` key or None), so a case is
    reproducible and the reversible stack can replay it. With ``shared_qk`` the function is
    given ``k = q`` (the Reformer's shared query-key projection). A function may also take
    keyword-only parameters named after case fields (``chunk_len``, ``n_hashes``,
    ``n_buckets``, ``seed``): the harness passes those from the case. ``check_case(case)``,
    given a case's fields as a dict, raises ``ValueError`` naming the rule a case breaks
    (local: the length a multiple of ``chunk_len``): the suite parser calls it for every case
    that runs the attention, so a sweep that breaks it is refused before it runs, not a
    column of error rows.
    """

    name: str
    summary: str
    torch: Callable | None = None
    jax: Callable | None = None
    shared_qk: bool = False
    check_case: Callable[[dict[str, Any]], None] | None = None

    @property
    def frameworks(self) -> tuple[str, ...]:
        return tuple(f for f in ("torch", "jax") if getattr(self, f) is not None)

    def function(self, framework: str) -> Callable:
        fn = getattr(self, framework, None) if framework in ("torch", "jax") else None
        if fn is None:
            raise ValueError(f"attention {self.name!r} has no {framework} function (it has "
                             f"{', '.join(self.frameworks)})")
        return fn


# Every registered attention function, by name (the built-in ``local`` and plugins').
ATTENTIONS: dict[str, Attention] = {}


def register_attention(name: str, *, summary: str, torch: Callable | None = None,
                       jax: Callable | None = None, shared_qk: bool = False,
                       check_case: Callable[[dict[str, Any]], None] | None = None
                       ) -> Attention:
    """Register an attention function under ``name`` (see :class:`Attention`), for one
    framework or both. Registering the same functions again is a no-op; another attention
    under a name already taken is an error."""
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_.+"
                                                        for c in name):
        raise ValueError(f"register_attention: name {name!r}: a non-empty name of letters, "
                         "digits and - _ . +")
    if not isinstance(summary, str) or not summary.strip():
        raise ValueError(f"register_attention({name!r}): summary must be a non-empty string")
    for framework, fn in (("torch", torch), ("jax", jax)):
        if fn is not None and not callable(fn):
            raise ValueError(f"register_attention({name!r}): {framework}={fn!r} is not "
                             "callable")
    if torch is None and jax is None:
        raise ValueError(f"register_attention({name!r}): give a torch or a jax function "
                         "(or both)")
    if check_case is not None and not callable(check_case):
        raise ValueError(f"register_attention({name!r}): check_case={check_case!r} is not "
                         "callable")
    attention = Attention(name, summary, torch, jax, bool(shared_qk), check_case)
    known = ATTENTIONS.get(name)
    if known is not None and known != attention:
        raise ValueError(f"attention {name!r} is already registered")
    if known is None and name in VARIANTS:
        raise ValueError(f"register_attention({name!r}): the name of a variant already")
    if name == "full" or (name.startswith("lsh-") and name[4:].isdigit()):
        raise ValueError(f"register_attention({name!r}): a task's name for a built-in "
                         "attention ('full', 'lsh-N')")
    ATTENTIONS[name] = attention
    VARIANTS[name] = Variant(name, summary, "layer", "custom", frameworks=attention.frameworks)
    return attention


def case_rule_problem(name: str, case: dict[str, Any]) -> str | None:
    """What registered attention ``name``'s ``check_case`` says of ``case`` (None: nothing).
    A rule it states is a ``ValueError``; anything else it raises is its own bug, said as
    such rather than as a traceback out of the suite parser."""
    check = ATTENTIONS[name].check_case
    if check is None:
        return None
    try:
        check(case)
    except ValueError as exc:
        return f"attention {name!r} cannot run this case: {exc}"
    except Exception as exc:  # noqa: BLE001 - a plugin's bug, named with the attention
        return (f"attention {name!r}: its check_case raised {type(exc).__name__}: {exc} "
                "(a rule it states should be a ValueError)")
    return None


def get_attention(name: str) -> Attention:
    load_installed_attentions()
    try:
        return ATTENTIONS[name]
    except KeyError:
        raise KeyError(f"unknown attention {name!r}; registered: "
                       f"{', '.join(ATTENTIONS) or 'none'}") from None


# Case fields a registered function may take as keyword-only parameters.
CASE_KEYWORDS = ("chunk_len", "n_hashes", "n_buckets")


def declared_keywords(fn: Callable) -> tuple[str, ...]:
    """The case fields (:data:`CASE_KEYWORDS`) ``fn`` takes as keyword parameters."""
    if isinstance(fn, _Lazy):
        return fn.keywords  # stated at registration: no framework import to find them
    import inspect

    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in CASE_KEYWORDS if name in parameters)


def attention_keywords(attention: Attention) -> tuple[str, ...]:
    """The case fields any of ``attention``'s functions takes (the suite keeps those)."""
    names = {n for f in attention.frameworks for n in declared_keywords(attention.function(f))}
    return tuple(n for n in CASE_KEYWORDS if n in names)


def case_keywords(fn: Callable, spec: AttentionSpec) -> dict:
    """The case fields ``fn`` declares as keyword parameters, from ``spec``."""
    return {name: getattr(spec, name) for name in declared_keywords(fn)
            if getattr(spec, name) is not None}


class AttentionContractError(ValueError):
    """A registered attention function returned something other than an output like ``v``."""


def check_attention_output(name: str, out, v) -> None:
    """Refuse an output that is not shaped, typed and placed like ``v``, naming the attention
    and what it returned (the case becomes an error row; the sweep goes on)."""
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    wrong = []
    if shape is None or dtype is None:
        wrong.append(f"a {type(out).__name__}")
    else:
        if tuple(shape) != tuple(v.shape):
            wrong.append(f"shape {tuple(shape)}")
        if dtype != v.dtype:
            wrong.append(f"dtype {dtype}")
        if hasattr(v, "is_cuda") and getattr(out, "device", None) != v.device:  # torch
            wrong.append(f"device {out.device}")
    if wrong:
        raise AttentionContractError(
            f"attention {name!r} returned {', '.join(wrong)}; it must return an output like v: "
            f"shape {tuple(v.shape)}, dtype {v.dtype}")


class _Lazy:
    """A function imported on first call, so registering the built-ins imports no framework."""

    def __init__(self, module: str, name: str, keywords: tuple[str, ...] = ()) -> None:
        self.module, self.name, self.keywords = module, name, keywords

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Lazy) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self) -> int:
        return hash((self.module, self.name))


ENTRY_POINT_GROUP = "attnbench.attentions"
_entry_points_loaded = False


def load_installed_attentions() -> None:
    """Load the attentions installed packages register through the ``attnbench.attentions``
    entry point group: each entry point names a module (importing it registers) or a
    callable (called with no arguments). Once per process; a failure names the entry point."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, type(sys)):
                loaded()
        except Exception as exc:  # noqa: BLE001 - any failure is the entry point's, named
            raise ImportError(f"entry point {entry.name!r} ({entry.value}) of group "
                              f"{ENTRY_POINT_GROUP}: {type(exc).__name__}: {exc}") from exc


def _layer(name, summary, attention, impl="naive"):
    return Variant(name, summary, "layer", attention, impl)


def _model(name, summary, attention, reversible, chunked_ff, impl="fused"):
    return Variant(name, summary, "model", attention, impl if attention == "full" else "naive",
                   reversible, chunked_ff)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    _layer("full-naive", "full attention layer, L x L matrix materialised", "full"),
    _layer("full-fused", "full attention layer, the framework's fused kernel "
           "(torch SDPA; JAX dot_product_attention)", "full", "fused"),
    _layer("full-shared-qk", "exact attention with the Reformer's shared, normalised keys",
           "shared_qk"),
    _layer("lsh", "LSH attention layer (the Reformer's)", "lsh"),
    _model("transformer", "Transformer LM: full fused attention, plain residual stack, "
           "unchunked feed-forward", "full", False, False),
    _model("transformer-shared-qk", "Transformer LM with shared-QK attention", "shared_qk",
           False, False),
    _model("transformer-reversible", "Transformer LM with a reversible stack", "full",
           True, False),
    _model("transformer-chunked-ff", "Transformer LM with a chunked feed-forward", "full",
           False, True),
    _model("reversible-chunked-transformer", "full attention, reversible stack, chunked "
           "feed-forward (the paper's 'chunked reversible Transformer')", "full", True, True),
    _model("lsh-transformer", "Transformer LM with LSH attention only (plain stack, "
           "unchunked feed-forward)", "lsh", False, False),
    _model("reformer-no-reversible", "LSH attention and chunked feed-forward, plain stack",
           "lsh", False, True),
    _model("reformer-no-chunked-ff", "LSH attention and a reversible stack, unchunked "
           "feed-forward", "lsh", True, False),
    _model("reformer", "the Reformer: LSH attention, reversible stack, chunked feed-forward",
           "lsh", True, True),
)}


def register_variant(variant: Variant) -> Variant:
    """Add a variant (from a plugin); a name already taken by another variant is an error."""
    known = VARIANTS.get(variant.name)
    if known is not None and known != variant:
        raise ValueError(f"variant {variant.name!r} is already registered")
    if variant.build is not None and variant.frameworks != ("torch",):
        raise ValueError(f"variant {variant.name!r}: plugin builders are torch layers; "
                         f"frameworks must be ('torch',), not {variant.frameworks}")
    VARIANTS[variant.name] = variant
    return variant


def load_plugin(ref: str) -> None:
    """Import a plugin (a dotted module name or a ``.py`` path) that registers variants.
    This runs the plugin's code: a suite's ``plugins`` are trusted like the suite's author."""
    if ref.endswith(".py") or os.sep in ref or "/" in ref:
        path = Path(ref).resolve()
        if not ref.endswith(".py"):
            raise ValueError(f"plugin {ref!r}: a path must name a .py file (or give a dotted "
                             "module name)")
        if not path.is_file():
            raise FileNotFoundError(f"plugin file not found: {ref!r}")
        # keyed by the whole path: two plugins named plugin.py in two folders both load
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
        name = f"_attnbench_plugin_{path.stem}_{digest}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # a later attempt must run the file again
            raise
    else:
        if not all(part.isidentifier() for part in ref.split(".")):
            raise ValueError(f"plugin {ref!r}: neither a .py file nor a dotted module name")
        importlib.import_module(ref)


def _local_case(case: dict[str, Any]) -> None:
    check_local_args(case["length"], case["chunk_len"])


register_attention(
    "local", summary="blocked sliding-window attention: each query attends to its own chunk "
    "and the one before (chunk_len), exact within it; the baseline LSH must beat",
    torch=_Lazy("attnbench.torch_impl.local_attention", "local_attention", ("chunk_len",)),
    jax=_Lazy("attnbench.jax_impl.local_attention", "local_attention", ("chunk_len",)),
    check_case=_local_case)


def get_variant(name: str) -> Variant:
    load_installed_attentions()
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def attention_kind(variant: Variant, case) -> str:
    """The AttentionSpec kind ``case`` runs: ``custom`` where the case names a registered
    attention (``Case.attention``, model variants), else the variant's."""
    return "custom" if getattr(case, "attention", None) else variant.attention


def case_frameworks(variant: Variant, case) -> tuple[str, ...]:
    """The frameworks ``case`` can run in: its registered attention's (``Case.attention``)
    where it names one, else the variant's."""
    attention = getattr(case, "attention", None)
    return get_attention(attention).frameworks if attention else variant.frameworks


def shares_qk(spec: AttentionSpec) -> bool:
    """Whether a ``custom`` layer has the shared query-key projection (``k = q``): as its
    attention was registered, unless the spec says (a task's models always share it)."""
    if spec.shared_qk is not None:
        return spec.shared_qk
    return get_attention(spec.custom).shared_qk


def attention_spec(variant: Variant, case) -> AttentionSpec:
    """The attention layer of ``variant`` at ``case``'s settings; a model case naming a
    registered attention (``Case.attention``) runs that one in the variant's stack."""
    custom = getattr(case, "attention", None) or (
        variant.name if variant.attention == "custom" else None)
    if custom is not None:
        # the case fields a registered function may declare (CASE_KEYWORDS), where set
        given = {name: getattr(case, name) for name in CASE_KEYWORDS
                 if getattr(case, name, None) is not None}
        return AttentionSpec(kind="custom", custom=custom, n_heads=case.n_heads,
                             causal=case.causal, **given)
    if variant.hashed:
        return AttentionSpec(kind="lsh", n_heads=case.n_heads, causal=case.causal,
                             n_hashes=case.n_hashes, n_buckets=case.n_buckets,
                             chunk_len=case.chunk_len, kernel=case.resolved_kernel or "auto")
    return AttentionSpec(kind=variant.attention, n_heads=case.n_heads, causal=case.causal,
                         impl=variant.impl)


def model_spec(variant: Variant, case) -> ModelSpec:
    """The language model of a model ``variant`` at ``case``'s settings."""
    if variant.kind != "model":
        raise ValueError(f"variant {variant.name!r} is a {variant.kind}, not a model")
    return ModelSpec(
        vocab_size=case.vocab_size, d_model=case.d_model, n_layers=case.depth,
        max_len=case.length, attention=attention_spec(variant, case),
        feed_forward=FeedForwardSpec(d_ff=case.d_ff,
                                     chunk_len=case.ff_chunk_len if variant.chunked_ff else None),
        reversible=variant.reversible, positions="learned")


def describe() -> str:
    """The registry as a table for ``attnbench list``."""
    load_installed_attentions()
    rows = [("name", "kind", "frameworks", "modes", "what")]
    for v in VARIANTS.values():
        rows.append((v.name, v.kind, ",".join(v.frameworks), ",".join(v.modes), v.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True))
                     + "  " + r[4])
    registered = ", ".join(ATTENTIONS)
    lines.append(f"\nRegistered attentions ({registered}): layer variants of their own, and "
                 "in any model variant with the case field attention = NAME (forward, "
                 "forward-backward, train-step, task; a task's eval_attentions may name them)")
    lines.append("\nLSH kernels (case field kernel): auto (default: triton for torch on CUDA, "
                 "pallas for JAX on GPU, portable on the CPU), portable (framework ops, any "
                 "device), triton (torch, CUDA), pallas (JAX, GPU); the row's kernel field "
                 "says which ran")
    return "\n".join(lines)
