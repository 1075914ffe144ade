"""One point of a sweep: a frozen, self-describing record, and its stable id.

A :class:`Case` carries everything a worker needs to build and measure one point and
everything a reader needs to know what was measured. ``case_id`` hashes only the fields
that define *what* is measured (variant, framework, device, dtype, mode, shapes, LSH
settings, a model's registered attention, seed, mode options), not *how* (repeats, budgets,
timeouts, the suite's name), so the same point in two runs or two suites has the same id
and ``attnbench compare`` can pair them. The LSH ``kernel`` enters the id as the kernel that
runs (``auto`` resolved for the case's framework and device), and only when that is not the
portable core, so ``auto`` and the kernel it names are one case, and ids made before kernels
existed still pair; ``attention`` enters it only when set, for the same reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attnbench.spec import resolve_kernel

FRAMEWORKS = ("torch", "jax")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
# forward: one forward pass without autograd (inference); forward-backward: the gradient of
# the output's sum (layers) or of the LM loss (models); train-step: forward, backward and an
# Adam update (models); approx: LSH approximation quality against exact shared-QK attention;
# task: train on a synthetic task and evaluate under several attention configurations.
MODES = ("forward", "forward-backward", "train-step", "approx", "task")
TIMED_MODES = ("forward", "forward-backward", "train-step")

_MODE_ABBREV = {"forward": "fwd", "forward-backward": "fb", "train-step": "train"}

# Fields that say how a case is measured, not what: left out of case_id.
HOW_FIELDS = ("suite", "plugins", "threads", "warmup", "min_repeats", "max_repeats",
              "target_rel_iqr", "time_budget_s", "timeout_s", "memory_limit_mb")


@dataclass(frozen=True)
class Case:
    # what
    variant: str
    framework: str
    mode: str
    length: int
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    d_model: int = 256
    n_heads: int = 4
    d_ff: int | None = None         # model variants only
    depth: int = 1
    vocab_size: int | None = None   # model variants only
    causal: bool = False
    n_hashes: int | None = None     # None: the variant does not hash
    n_buckets: int | None = None    # resolved (``auto`` expanded) for hashing variants
    chunk_len: int | None = None    # LSH chunk length; None for non-LSH variants
    ff_chunk_len: int | None = None  # feed-forward chunk (model variants that chunk)
    kernel: str | None = None       # LSH kernel asked for (spec.LSH_KERNELS); None: no LSH
    attention: str | None = None    # model variants: a registered attention run in the stack
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # mode-specific settings
    # how
    suite: str = ""
    plugins: tuple[str, ...] = ()   # modules or files registering extra variants
    threads: int | None = None      # CPU threads (torch.set_num_threads / JAX affinity)
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    target_rel_iqr: float = 0.05    # stop repeating once IQR / median falls below this
    time_budget_s: float = 10.0     # ... or once the timed repeats have used this much
    timeout_s: float = 300.0
    memory_limit_mb: int | None = None

    @property
    def resolved_kernel(self) -> str | None:
        """The LSH kernel that runs (``auto`` resolved for the framework and device)."""
        if self.kernel is None:
            return None
        return resolve_kernel(self.kernel, self.framework, self.device.partition(":")[0])

    def _what(self) -> dict[str, Any]:
        what = {k: v for k, v in dataclasses.asdict(self).items() if k not in HOW_FIELDS}
        kernel = what.pop("kernel")
        if kernel is not None and self.resolved_kernel != "portable":
            what["kernel"] = self.resolved_kernel
        if what["attention"] is None:  # ids made before the field existed still pair
            del what["attention"]
        return what

    @property
    def case_id(self) -> str:
        text = json.dumps(self._what(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    def series_key(self) -> str:
        """Every field but ``length``, ``batch`` and ``n_buckets`` (``auto`` grows with the
        length): the series an out-of-memory length cuts short."""
        d = {k: v for k, v in self._what().items() if k not in ("length", "batch", "n_buckets")}
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def label(self) -> str:
        """A short human-readable name: ``lsh/torch fb L=4096 h=4`` (see :func:`case_label`)."""
        return case_label(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown case field(s) {unknown}")
        if "plugins" in data:
            data = {**data, "plugins": tuple(data["plugins"])}
        return cls(**data)


def _resolved_kernel(case: Mapping[str, Any]) -> str | None:
    """The LSH kernel a case runs (as Case.resolved_kernel; None when it cannot say)."""
    try:
        return resolve_kernel(case["kernel"], case["framework"],
                              str(case.get("device", "cpu")).partition(":")[0])
    except (KeyError, TypeError, ValueError):
        return None


def case_label(case: Mapping[str, Any]) -> str:
    """The one label of a case, from a :class:`Case` or a stored row's case dict (missing
    fields show as ``?``): ``lsh/torch fb L=4096 h=4``, with the kernel when it is not the
    portable core, the registered attention a model runs (``transformer[local]``), the
    buckets and (unless random) the inputs of an approximation case, the attention a task
    trained with, and the device and dtype when they are not the CPU and float32."""
    mode = case.get("mode", "?")
    attention = f"[{case['attention']}]" if case.get("attention") else ""
    parts = [f"{case.get('variant', '?')}{attention}/{case.get('framework', '?')}",
             _MODE_ABBREV.get(mode, str(mode)), f"L={case.get('length', '?')}"]
    if case.get("batch", 1) not in (1, None):
        parts.append(f"B={case['batch']}")
    if case.get("depth", 1) not in (1, None):
        parts.append(f"depth={case['depth']}")
    if case.get("n_hashes") is not None:
        parts.append(f"h={case['n_hashes']}")
    kernel = _resolved_kernel(case)
    if kernel not in (None, "portable"):
        parts.append(kernel)
    if case.get("n_buckets") is not None and mode == "approx":
        parts.append(f"b={case['n_buckets']}")
    options = case.get("options")
    if isinstance(options, dict) and options.get("train_attention"):
        parts.append(f"train={options['train_attention']}")
    if isinstance(options, dict) and mode == "approx" and \
            options.get("inputs", "random") != "random":
        parts.append(f"inputs={options['inputs']}")  # clustered and random cases differ
    if case.get("device", "cpu") != "cpu":
        parts.append(str(case.get("device")))
    if case.get("dtype", "float32") != "float32":
        parts.append(str(case.get("dtype")))
    return " ".join(parts)


def distinct_labels(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``case_id -> label`` for cases shown together: :func:`case_label`, and where several
    cases share one, each followed by the fields that tell them apart, in the case's field
    order (``full-fused/torch fb L=512 causal=False``): the label names the usual axes, and a
    suite may sweep any other."""
    by_label: dict[str, list[str]] = {}
    for case_id, case in cases.items():
        by_label.setdefault(case_label(case), []).append(case_id)
    order = [f.name for f in dataclasses.fields(Case) if f.name not in HOW_FIELDS]
    labels = {}
    for label, ids in by_label.items():
        if len(ids) == 1:
            labels[ids[0]] = label
            continue
        names = order + sorted({k for i in ids for k in cases[i]} - set(order) - set(HOW_FIELDS))
        differing = [n for n in names if len({_shown(cases[i].get(n)) for i in ids}) > 1]
        for i in ids:
            labels[i] = label + "".join(f" {n}={_shown(cases[i].get(n))}" for n in differing)
    return labels


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) \
        else str(value)


def selector_matches(selector: Mapping[str, Any], case: Mapping[str, Any]) -> bool:
    """Whether every key of ``selector`` (a contract's side, an exclude) equals the case's
    field, or, for a key that is not a field, its option; ``attention = ""`` is the variant's
    own attention (TOML has no null)."""
    options = case.get("options") if isinstance(case.get("options"), dict) else {}
    for key, want in selector.items():
        if key == "attention" and want == "":
            if case.get("attention"):
                return False
            continue
        if key in case:
            have = case[key]
        elif key in options:
            have = options[key]
        else:
            return False
        if have != want:
            return False
    return True


_ABSENT = object()


class CaseIndex:
    """Case dicts by each field (or option) a selector names, built per field on first use,
    so that C selectors over N cases cost about C + N, not C x N. A field holding an
    unhashable value (a list, a table) in any case is scanned instead."""

    def __init__(self, cases: list[Mapping[str, Any]]) -> None:
        self.cases = cases
        self._fields: dict[str, dict | None] = {}

    def _field(self, key: str) -> dict | None:
        if key not in self._fields:
            index: dict | None = {}
            for i, case in enumerate(self.cases):
                options = case.get("options") if isinstance(case.get("options"), dict) else {}
                have = case[key] if key in case else options.get(key, _ABSENT)
                if have is _ABSENT:
                    continue
                try:
                    index.setdefault(have, []).append(i)
                except TypeError:  # unhashable: this field is scanned
                    index = None
                    break
            self._fields[key] = index
        return self._fields[key]

    def matching(self, selector: Mapping[str, Any]) -> list[int]:
        """The positions of the cases ``selector`` matches, in order (as
        :func:`selector_matches`)."""
        candidates: list[int] | None = None
        for key, want in selector.items():
            if key == "attention" and want == "":  # "none": not indexed
                continue
            index = self._field(key)
            try:
                found = None if index is None else index.get(want, [])
            except TypeError:  # an unhashable wanted value: left to the scan below
                found = None
            if found is not None and (candidates is None or len(found) < len(candidates)):
                candidates = found
        ids = range(len(self.cases)) if candidates is None else candidates
        return [i for i in ids if selector_matches(selector, self.cases[i])]
