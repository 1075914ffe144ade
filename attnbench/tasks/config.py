"""Frozen, validated settings of one synthetic-task experiment, and the named presets.

A :class:`TaskConfig` says what is trained (task, model widths, the attention used in training,
optimiser settings, seed) and how it is evaluated (the attentions of the train x eval matrix,
how many batches). Attention configurations are short strings: ``"full"`` is exact shared-QK
attention (the paper's "full attention" rows of Table 2: same parameters as LSH, so a model
trained with one is evaluated with the other), ``"lsh-N"`` is LSH attention with N hashes, and
any other name is a registered attention, run on the same shared query-key projection.
A bad field raises ``ValueError`` naming the field, the value and the rule, as ``spec.py`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from attnbench.spec import AttentionSpec, FeedForwardSpec, ModelSpec
from attnbench.tasks.data import TASKS


def _fail(name: str, value: object, rule: str) -> None:
    raise ValueError(f"TaskConfig.{name}={value!r}: {rule}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "must be an int")
    if value < minimum:
        _fail(name, value, f"must be >= {minimum}")


def parse_attention(name: object) -> tuple[str, int]:
    """``"full"`` -> ("shared_qk", 1); ``"lsh-N"`` -> ("lsh", N); the name of a registered
    attention (:func:`attnbench.variants.register_attention`) -> ("custom", 1). ValueError
    otherwise."""
    from attnbench.variants import ATTENTIONS, load_installed_attentions

    if name == "full":
        return "shared_qk", 1
    if isinstance(name, str) and name.startswith("lsh-") and name[4:].isdigit():
        n_hashes = int(name[4:])
        if n_hashes >= 1:
            return "lsh", n_hashes
    load_installed_attentions()
    if isinstance(name, str) and name in ATTENTIONS:
        return "custom", 1
    raise ValueError(f"attention={name!r}: must be 'full' (exact shared-QK), 'lsh-N' (LSH with "
                     f"N >= 1 hashes) or a registered attention ({', '.join(ATTENTIONS)})")


@dataclass(frozen=True)
class TaskConfig:
    """One experiment: train a causal LM on ``task`` with ``train_attention``, evaluate it under
    each of ``eval_attentions``.

    The model is a plain pre-norm Transformer (``reversible=False``, the paper's "1-layer
    Transformer") or a reversible stack, with learned positions, no dropout and an unchunked
    feed-forward. ``n_buckets=None`` is the paper's ``2 * length / chunk_len``. ``log_every`` is
    the interval of the kept loss curve; ``eval_batches`` batches of ``batch`` sequences, from a
    stream the training never sees, are scored per eval attention.
    """

    task: str = "duplication"
    vocab_size: int = 32
    length: int = 64
    d_model: int = 64
    d_ff: int = 64
    n_heads: int = 4
    n_layers: int = 1
    train_attention: str = "full"
    eval_attentions: tuple[str, ...] = ("full", "lsh-8", "lsh-4", "lsh-2", "lsh-1")
    steps: int = 1000
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    chunk_len: int = 8
    n_buckets: int | None = None
    eval_batches: int = 4
    log_every: int = 50
    reversible: bool = False
    # Stop before ``steps`` once the training loss has plateaued (attnbench.tasks.stopping);
    # 0: train exactly ``steps``.
    plateau_steps: int = 0
    plateau_delta: float = 0.01
    plateau_below: float = 0.1

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            _fail("task", self.task, f"must be one of {', '.join(TASKS)}")
        _check_int("vocab_size", self.vocab_size, 5 if self.task == "recall" else 2)
        _check_int("length", self.length, 4)
        if self.length % 2:
            _fail("length", self.length, "must be even (both tasks are built from pairs)")
        for name in ("d_model", "d_ff", "n_heads", "n_layers", "steps", "batch", "chunk_len",
                     "eval_batches", "log_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        _check_int("plateau_steps", self.plateau_steps, 0)
        if self.plateau_steps and self.plateau_steps % self.log_every:
            _fail("plateau_steps", self.plateau_steps,
                  f"must be a multiple of log_every={self.log_every} (the rule reads the curve)")
        for name in ("plateau_delta", "plateau_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 < value < (1 if name == "plateau_below" else float("inf")):
                _fail(name, value, "must be a number > 0" + (" and < 1" if name ==
                                                             "plateau_below" else ""))
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            _fail("lr", self.lr, "must be a number > 0")
        if not isinstance(self.reversible, bool):
            _fail("reversible", self.reversible, "must be a bool")
        if not isinstance(self.eval_attentions, tuple) or not self.eval_attentions:
            _fail("eval_attentions", self.eval_attentions, "must be a non-empty tuple of str")
        for name in (self.train_attention, *self.eval_attentions):
            try:
                parse_attention(name)
            except ValueError as err:
                field = "train_attention" if name == self.train_attention else "eval_attentions"
                _fail(field, name, str(err).split(": ", 1)[1])
        if len(set(self.eval_attentions)) != len(self.eval_attentions):
            _fail("eval_attentions", self.eval_attentions, "must not repeat a name")
        # Every spec this config builds validates itself (n_buckets, d_model % n_heads, length).
        for name in (self.train_attention, *self.eval_attentions):
            try:
                self.model_spec(name)
            except ValueError as err:
                raise ValueError(f"TaskConfig (attention {name!r}): {err}") from None

    # ----------------------------------------------------------------------------------------

    def attention_spec(self, name: str) -> AttentionSpec:
        """The causal AttentionSpec of attention string ``name`` ("full", "lsh-N" or a
        registered attention). A registered attention runs on the shared query-key projection
        (``k = q``) whatever it was registered with: every model of the matrix has the same
        parameters, so weights trained under one attention run under each of the others."""
        kind, n_hashes = parse_attention(name)
        custom = {"custom": name, "shared_qk": True} if kind == "custom" else {}
        return AttentionSpec(kind=kind, n_heads=self.n_heads, causal=True, n_hashes=n_hashes,
                             n_buckets=self.n_buckets, chunk_len=self.chunk_len, **custom)

    def model_spec(self, name: str | None = None) -> ModelSpec:
        """The ModelSpec under attention ``name`` (``train_attention`` when None). All of a
        config's specs share one set of parameter names and shapes."""
        return ModelSpec(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            max_len=self.length,
            attention=self.attention_spec(self.train_attention if name is None else name),
            feed_forward=FeedForwardSpec(d_ff=self.d_ff, chunk_len=None),
            reversible=self.reversible, dropout=0.0, positions="learned")

    def replace(self, **changes: object) -> TaskConfig:
        return dataclasses.replace(self, **changes)

    def train_key(self) -> str:
        """A stable id of everything that decides the trained weights (not the evaluation):
        checkpoints are stored under it, so a changed training setting never loads stale
        weights and a changed evaluation re-uses them."""
        fields = dataclasses.asdict(self)
        for name in ("eval_attentions", "eval_batches"):
            fields.pop(name)
        if not self.plateau_steps:  # no rule: the keys of checkpoints made before it exist
            for name in ("plateau_steps", "plateau_delta", "plateau_below"):
                fields.pop(name)
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def preset(cls, name: str, **changes: object) -> TaskConfig:
        """A named preset (see :data:`PRESETS`) with ``changes`` applied."""
        if name not in PRESETS:
            raise ValueError(f"preset={name!r}: must be one of {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **changes})


# The settings of the paper's Table 2 (ICLR 2020 §2.1: length 1024, |w| = 511 from 127 symbols,
# 1 layer, d_model = d_ff = 256, 4 heads, 150K steps; chunk 64 as in the fastai reproduction,
# which also chose batch 64 and Adam at 1e-3: the paper states none of these), and the
# scaled-down CPU version whose whole train x eval matrix runs in minutes on two cores.
# cpu, measured on the 2-core dev machine (1 torch thread): trained 1000 steps, evaluated on
# 4 x 32 held-out sequences (3968 scored symbols; chance 1/31):
#   torch, full-trained: full 100%, LSH-8 100%, LSH-4 100%, LSH-2 99.3%, LSH-1 89.9% (36 s)
#   torch, LSH-4-trained: full 100%, LSH-8 100%, LSH-4 100%, LSH-2 99.6%, LSH-1 92.4% (115 s)
#   torch, LSH-1-trained (600 steps): LSH-8 100%, LSH-1 97.6%; JAX LSH-1 (800): LSH-8 100%
# Both frameworks learn the copy by ~300 steps; 1000 leaves a margin for other seeds.
PRESETS: dict[str, dict[str, object]] = {
    "paper": dict(task="duplication", vocab_size=128, length=1024, d_model=256, d_ff=256,
                  n_heads=4, n_layers=1, steps=150_000, batch=64, lr=1e-3, chunk_len=64,
                  eval_batches=8, log_every=500),
    "cpu": dict(task="duplication", vocab_size=32, length=64, d_model=64, d_ff=64, n_heads=4,
                n_layers=1, steps=1000, batch=32, lr=1e-3, chunk_len=8, eval_batches=4,
                log_every=50),
}
