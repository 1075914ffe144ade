"""Suites as data: parse and validate a TOML suite, then expand it into cases.

A suite file (format and examples: ``suites/README.md``)::

    name = "quickstart"
    description = "..."
    [defaults]            # any case field, for every sweep (a scalar or a list)
    [[sweep]]             # one or more; each expands as the product of its axes
    variant = ["lsh", "full-fused"]
    length = [1024, 4096]
    tokens_per_batch = 8192        # instead of batch: batch = tokens_per_batch / length
    exclude = [{variant = "full-fused", length = 4096}]
    [[exclude]]           # suite-wide exclusions
    [[contract]]          # same-run ratio expectations, checked by ``attnbench check``

Everything is validated before anything runs; an error names the file, the key and the rule.
Axes that do not apply to a variant are dropped for it (full attention has no ``n_hashes``,
a layer has no ``depth``), so a mixed sweep runs full attention once per length. A combination
that cannot run (a mode the variant lacks, a length LSH cannot chunk) is an error, unless an
``exclude`` removes it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.runner.accuracy_modes import check_options
from attnbench.runner.case import DEVICES, DTYPES, FRAMEWORKS, MODES, Case, CaseIndex
from attnbench.safeio import UnsafePathError, read_text
from attnbench.spec import FRAMEWORK_KERNELS, LSH_KERNELS, default_n_buckets, resolve_kernel
from attnbench.variants import (
    ATTENTIONS,
    VARIANTS,
    attention_keywords,
    case_rule_problem,
    load_installed_attentions,
    load_plugin,
)

CASE_FIELDS = {f.name: f for f in dataclasses.fields(Case)}
AXES = tuple(name for name in CASE_FIELDS if name not in ("suite", "plugins"))
SWEEP_KEYS = set(AXES) | {"name", "exclude", "tokens_per_batch"}
TOP_KEYS = {"name", "description", "plugins", "defaults", "sweep", "exclude", "contract"}
CONTRACT_KEYS = {"name", "metric", "numerator", "denominator", "max_ratio", "min_ratio"}
MODEL_DEFAULTS = {"d_ff": 1024, "vocab_size": 256}
LSH_DEFAULTS = {"n_hashes": 1, "n_buckets": "auto", "chunk_len": 64, "kernel": "auto"}

_INT_FIELDS = ("batch", "length", "d_model", "n_heads", "d_ff", "depth", "vocab_size",
               "n_hashes", "chunk_len", "ff_chunk_len", "threads", "warmup", "min_repeats",
               "max_repeats", "memory_limit_mb", "seed")
_MINIMUM = {"warmup": 0, "seed": 0}
# A suite that expands past this many cases is refused unless the caller raises the limit
# (attnbench run --max-cases): expanding millions takes minutes and gigabytes.
MAX_CASES = 100_000


# A suite's name becomes reports/runs/<name>: no separators, no '.' or '..', nothing hidden.
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SuiteError(ValueError):
    """A suite that cannot run; the message names the file, the key and the rule."""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    cases: tuple[Case, ...]
    contracts: tuple[dict, ...] = ()
    source: dict = field(default_factory=dict)  # the parsed TOML, copied into meta.json


SUITE_LIMIT = 4 * 2**20  # bytes of a suite file (the shipped ones are a few KiB)


def load_suite(path: str | Path, max_cases: int = MAX_CASES) -> Suite:
    path = Path(path)
    try:
        text = read_text(path, SUITE_LIMIT, "suite")
    except UnsafePathError as exc:
        raise SuiteError(str(exc)) from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                         "a suite is TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise SuiteError(f"{path}: not valid TOML (nested too deeply)") from None
    return parse_suite(data, str(path), max_cases)


def parse_suite(data: dict, where: str = "<suite>", max_cases: int = MAX_CASES) -> Suite:
    def fail(key: str, rule: str) -> None:
        raise SuiteError(f"{where}: {key}: {rule}")

    _check_finite(data, "", fail)
    try:  # attentions that installed packages register (entry points)
        load_installed_attentions()
    except ImportError as exc:
        fail("plugins", str(exc))
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not SUITE_NAME.fullmatch(name):
        fail("name", f"{name!r}: required, 1-64 characters of letters, digits, '.', '_' and "
             "'-', starting with a letter or digit (it names the run directory; --out "
             "chooses another)")
    description = data.get("description", "")
    if not isinstance(description, str):
        fail("description", "must be a string")
    plugins = _plugins(data.get("plugins", []), where, fail)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        fail("defaults", "must be a table")
    _check_keys(defaults, set(AXES) | {"tokens_per_batch"}, "defaults", fail)
    sweeps = data.get("sweep")
    if not isinstance(sweeps, list) or not sweeps:
        fail("sweep", "required: at least one [[sweep]] table")
    global_excludes = _excludes(data.get("exclude", []), "exclude", fail)

    cases: dict[str, Case] = {}
    for i, sweep in enumerate(sweeps):
        key = f"sweep[{i}]" + (f" ({sweep['name']})" if isinstance(sweep, dict)
                               and isinstance(sweep.get("name"), str) else "")
        if not isinstance(sweep, dict):
            fail(key, "must be a table")
        _check_keys(sweep, SWEEP_KEYS, key, fail)
        excludes = global_excludes + _excludes(sweep.get("exclude", []), f"{key}.exclude", fail)
        merged = {**defaults, **{k: v for k, v in sweep.items() if k not in ("name", "exclude")}}
        size = math.prod(len(_axis(merged, a)) for a in merged if a in AXES
                         or a == "tokens_per_batch")
        if len(cases) + size > max_cases:
            fail(key, f"expands to {size:,} case(s) ({len(cases) + size:,} with the sweeps "
                 f"before it), more than the limit of {max_cases:,} (attnbench run "
                 "--max-cases N raises it)")
        for case in _expand(merged, excludes, key, name, fail):
            case = dataclasses.replace(case, plugins=plugins)
            cases.setdefault(case.case_id, case)
    if not cases:
        fail("sweep", "expands to no cases (everything excluded?)")
    if not isinstance(data.get("contract", []), list):
        fail("contract", "must be [[contract]] tables")
    contracts = tuple(_contract(c, f"contract[{i}]", fail)
                      for i, c in enumerate(data.get("contract", [])))
    _check_selectable(contracts, cases.values(), fail)
    return Suite(name=name, description=description, path=where,
                 cases=tuple(order_cases(cases.values())), contracts=contracts, source=data)


def _check_finite(value, key: str, fail) -> None:
    """TOML has nan and inf; JSON (meta.json, results.jsonl) does not, and no setting needs
    them."""
    if isinstance(value, float) and not math.isfinite(value):
        fail(key or "suite", f"{value!r}: must be a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k), fail)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]", fail)


def _plugins(value, where: str, fail) -> tuple[str, ...]:
    """Import each plugin now (its variants must validate) and return absolute references:
    a ``.py`` path is taken relative to the suite file, so workers find it from any cwd.
    A plugin is Python: loading the suite runs it (``attnbench run``, ``--dry-run``, which
    needs its variants to expand the cases); ``attnbench list`` does not load suites."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fail("plugins", "must be a list of module names or .py paths")
    refs = []
    for ref in value:
        if ref.endswith(".py"):
            base = Path(where).parent if where != "<suite>" else Path.cwd()
            ref = str((base / ref).resolve())
        try:
            load_plugin(ref)
        except SystemExit as exc:  # a plugin may not end attnbench
            fail("plugins", f"{ref!r} called sys.exit({exc.code!r}) while loading")
        except (Exception, GeneratorExit) as exc:  # noqa: BLE001 - the suite's error
            fail("plugins", f"cannot load {ref!r}: {type(exc).__name__}: {exc}")
        except BaseException as exc:  # a plugin's own BaseException; a real Ctrl-C goes on
            if isinstance(exc, KeyboardInterrupt) and not _raised_in(exc, ref):
                raise
            fail("plugins", f"{ref!r} raised {type(exc).__name__} while loading: {exc}")
        refs.append(ref)
    return tuple(refs)


def _raised_in(exc: BaseException, ref: str) -> bool:
    """Whether ``exc`` was raised by the plugin's own code (a ``raise`` in its file), not by
    a Ctrl-C that arrived while it loaded."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and ref.endswith(".py") and frames[-1].filename == ref and \
        (frames[-1].line or "").lstrip().startswith("raise")


def _check_keys(table: dict, allowed: set[str], key: str, fail) -> None:
    for k in table:
        if k not in allowed:
            fail(f"{key}.{k}", "unknown key (allowed: case fields "
                 f"{', '.join(AXES)}; and tokens_per_batch, exclude, name in a sweep)")


def _excludes(value, key: str, fail) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        fail(key, "must be a list of tables like {variant = \"full-naive\", length = 16384}")
    for i, entry in enumerate(value):
        for k in entry:
            if k not in AXES:
                fail(f"{key}[{i}].{k}", f"unknown case field (known: {', '.join(AXES)})")
    # attention = "": the variant's own attention, which a case records as none
    return [{**e, "attention": None} if e.get("attention") == "" else e for e in value]


def _axis(values: dict, name: str) -> list:
    value = values.get(name)
    if name == "options":
        if value is None:
            return [{}]
        return list(value) if isinstance(value, list) else [value]
    if isinstance(value, list):
        return value
    return [value]


class _Excludes:
    """``[[exclude]]`` tables as sets of value tuples, one set per combination of fields they
    name, so a point is checked against each combination once, not against every table (a
    suite with 20,000 exclusions expanded in minutes). Tables holding an unhashable value (an
    ``options`` table) are compared one by one."""

    def __init__(self, excludes: list[dict]) -> None:
        self.sets: dict[tuple[str, ...], set] = {}
        self.others: list[dict] = []
        for entry in excludes:
            fields = tuple(sorted(entry))
            try:
                self.sets.setdefault(fields, set()).add(tuple(entry[k] for k in fields))
            except TypeError:
                self.others.append(entry)

    def match(self, get) -> bool:
        """Whether an exclusion matches the point whose field ``k`` is ``get(k)``."""
        for fields, values in self.sets.items():
            try:
                if tuple(get(k) for k in fields) in values:
                    return True
            except TypeError:  # the point's value is unhashable: compare one by one
                if any(all(get(k) == v for k, v in zip(fields, entry, strict=True))
                       for entry in values):
                    return True
        return any(all(get(k) == v for k, v in ex.items()) for ex in self.others)


def _expand(values: dict, excludes: list[dict], key: str, suite: str, fail) -> Iterable[Case]:
    if "batch" in values and "tokens_per_batch" in values:
        fail(f"{key}.tokens_per_batch", "give either batch or tokens_per_batch, not both")
    for axis in ("variant", "framework", "mode", "length"):
        if values.get(axis) in (None, []):
            fail(f"{key}.{axis}", "required (in the sweep or in [defaults])")
    axes = [a for a in AXES if a in values] + (["tokens_per_batch"]
                                               if "tokens_per_batch" in values else [])
    for axis in axes:
        if isinstance(values[axis], list) and not values[axis]:
            fail(f"{key}.{axis}", "an empty list expands to nothing")
    excluded = _Excludes(excludes)
    for combo in itertools.product(*(_axis(values, a) for a in axes)):
        point = dict(zip(axes, combo, strict=True))
        if excluded.match(point.get):
            continue
        case = _make_case(point, key, suite, fail)
        if excluded.match(functools.partial(getattr, case)):
            continue
        yield case


def _make_case(point: dict, key: str, suite: str, fail) -> Case:
    def bad(name: str, rule: str) -> None:
        fail(f"{key}.{name}", f"{point.get(name)!r} {rule}")

    variant_name = point["variant"]
    if not isinstance(variant_name, str) or variant_name not in VARIANTS:
        bad("variant", f"is not a variant (known: {', '.join(VARIANTS)}; see attnbench list)")
    variant = VARIANTS[variant_name]
    frameworks = variant.frameworks
    attention = point.get("attention")
    if attention == "":  # the variant's own (an axis can hold it beside registered ones)
        attention = None
    if attention is not None:
        if not isinstance(attention, str) or attention not in ATTENTIONS:
            bad("attention", "is not a registered attention (registered: "
                f"{', '.join(ATTENTIONS)}; a plugin registers one with register_attention)")
        if variant.kind != "model":
            bad("attention", f"replaces a model variant's attention, and {variant_name!r} is a "
                f"{variant.kind} (a registered attention is a layer variant itself: variant = "
                f"{attention!r})")
        frameworks = ATTENTIONS[attention].frameworks
    for name, choices in (("framework", FRAMEWORKS), ("mode", MODES), ("dtype", DTYPES)):
        if name in point and point[name] not in choices:
            bad(name, f"must be one of {', '.join(choices)}")
    device = point.get("device", "cpu")
    if not isinstance(device, str) or device.partition(":")[0] not in DEVICES or (
            device.partition(":")[2] and not device.partition(":")[2].isdigit()):
        bad("device", "must be cpu, cuda or cuda:N")
    if point["framework"] not in frameworks:
        owner = f"attention {attention!r}" if attention else f"variant {variant_name!r}"
        bad("framework", f"is not available for {owner} (it has {', '.join(frameworks)})")
    if point["mode"] not in variant.modes:
        bad("mode", f"is not a mode of {variant.kind} variant {variant_name!r} "
            f"(its modes: {', '.join(variant.modes)}; or exclude the combination)")
    for name in _INT_FIELDS + ("tokens_per_batch",):
        value = point.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < _MINIMUM.get(name, 1)):
            bad(name, f"must be an integer >= {_MINIMUM.get(name, 1)}")
    for name in ("target_rel_iqr", "time_budget_s", "timeout_s"):
        value = point.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                  or not math.isfinite(value) or value <= 0):
            bad(name, "must be a positive, finite number")
    if "causal" in point and not isinstance(point["causal"], bool):
        bad("causal", "must be true or false")
    if "options" in point and not isinstance(point["options"], dict):
        bad("options", "must be a table (or a list of tables, one per value)")

    fields = {k: v for k, v in point.items() if k != "tokens_per_batch"}
    fields["attention"] = attention
    fields["suite"] = suite
    if "tokens_per_batch" in point:
        tpb, length = point["tokens_per_batch"], point["length"]
        if tpb % length:
            bad("tokens_per_batch", f"is not a multiple of length={length}")
        fields["batch"] = tpb // length
    # Drop what does not apply to this variant; fill in what does.
    # A task case keeps chunk_len and n_buckets whatever it trains with: it is also
    # evaluated under LSH.
    kind = "custom" if attention else variant.attention
    hashed = kind == "lsh"
    if hashed or (fields["mode"] == "task" and kind in ("shared_qk", "custom")):
        for name, default in LSH_DEFAULTS.items():
            if fields.get(name) is None:
                fields[name] = default
        if fields["length"] % fields["chunk_len"]:
            bad("length", f"must be a multiple of chunk_len={fields['chunk_len']} for LSH")
        if fields["n_buckets"] == "auto":
            fields["n_buckets"] = default_n_buckets(fields["length"], fields["chunk_len"])
        elif (not isinstance(fields["n_buckets"], int) or fields["n_buckets"] < 2
              or fields["n_buckets"] % 2):
            bad("n_buckets", "must be \"auto\" or an even integer >= 2")
        _check_kernel(fields, bad)
        if not hashed:
            fields["n_hashes"] = None
    else:
        # a registered attention keeps the case fields its functions declare (local:
        # chunk_len), with the LSH defaults; every other LSH field is dropped
        kept = attention_keywords(ATTENTIONS[attention or variant.name]) \
            if kind == "custom" else ()
        for name, default in LSH_DEFAULTS.items():
            fields[name] = (default if fields.get(name) is None else fields[name]) \
                if name in kept else None
        if fields.get("n_buckets") == "auto":
            fields["n_buckets"] = default_n_buckets(fields["length"], fields["chunk_len"] or 64)
    if variant.kind == "model":
        for name, default in MODEL_DEFAULTS.items():
            if fields.get(name) is None:
                fields[name] = default
        if variant.chunked_ff:
            fields["ff_chunk_len"] = fields.get("ff_chunk_len") or 64
        else:
            fields["ff_chunk_len"] = None
    else:
        fields.update(depth=1, d_ff=None, vocab_size=None, ff_chunk_len=None)
    d_model = fields.get("d_model", CASE_FIELDS["d_model"].default)
    n_heads = fields.get("n_heads", CASE_FIELDS["n_heads"].default)
    if d_model % n_heads:
        bad("d_model", f"is not divisible by n_heads={n_heads}")
    min_r = fields.get("min_repeats", CASE_FIELDS["min_repeats"].default)
    if fields.get("max_repeats", CASE_FIELDS["max_repeats"].default) < min_r:
        bad("max_repeats", f"must be >= min_repeats={min_r}")
    case = Case(**fields)
    try:
        check_options(case, variant)
    except ValueError as exc:
        fail(f"{key}.options", str(exc))
    runs = attention or (variant.name if variant.name in ATTENTIONS else None)
    problem = case_rule_problem(runs, case.to_dict()) if runs is not None else None
    if problem:  # its own rule (local: whole chunks), said before the sweep
        fail(key, f"{case.label()}: {problem}")
    return case


def _check_kernel(fields: dict, bad) -> None:
    """The kernel must belong to the framework, and a fused kernel needs a GPU: on the CPU
    the Triton and Pallas kernels run only in their interpreters, which the tests use."""
    kernel = fields["kernel"]
    if kernel not in LSH_KERNELS:
        bad("kernel", f"must be one of {', '.join(LSH_KERNELS)}")
    own = FRAMEWORK_KERNELS[fields["framework"]]
    if kernel not in ("auto", *own):
        bad("kernel", f"is not a {fields['framework']} kernel (it has auto, {', '.join(own)})")
    if kernel not in ("auto", "portable") and fields.get("device", "cpu") == "cpu":
        bad("kernel", "runs on CUDA only (on the CPU a fused kernel runs only in its "
            "interpreter, for tests; use auto or portable)")
    device_type = fields.get("device", "cpu").partition(":")[0]
    if fields["mode"] in ("approx", "task") and kernel != "auto" and (
            resolve_kernel(kernel, fields["framework"], device_type)
            != resolve_kernel("auto", fields["framework"], device_type)):
        bad("kernel", f"is not what mode {fields['mode']!r} runs: accuracy modes use the "
            "kernel auto picks for the device")


def _contract(entry, key: str, fail) -> dict:
    if not isinstance(entry, dict):
        fail(key, "must be a table")
    for k in entry:
        if k not in CONTRACT_KEYS:
            fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(CONTRACT_KEYS))})")
    if not isinstance(entry.get("name"), str):
        fail(f"{key}.name", "required, a string")
    if not isinstance(entry.get("metric"), str):
        fail(f"{key}.metric", "required, a metric name such as time_median_s or mem_peak_mb")
    for side in ("numerator", "denominator"):
        selector = entry.get(side)
        if not isinstance(selector, dict) or not selector:
            fail(f"{key}.{side}", "required, a table of case fields selecting one result")
        for k in selector:
            if k not in AXES:
                fail(f"{key}.{side}.{k}", f"unknown case field (known: {', '.join(AXES)})")
    bounds = [b for b in ("max_ratio", "min_ratio") if b in entry]
    if not bounds:
        fail(key, "needs max_ratio and/or min_ratio")
    for b in bounds:
        v = entry[b]
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            fail(f"{key}.{b}", f"{v!r} must be a positive number")
    return dict(entry)


def _check_selectable(contracts: tuple[dict, ...], cases: Iterable[Case], fail) -> None:
    """A contract side that selects none of the suite's cases can never pass: said when the
    suite loads, not after the sweep. ``device`` is left out (``--device`` replaces it); a side
    may select several cases (a ``--framework`` filter can leave one in the run)."""
    if not contracts:
        return
    index = CaseIndex([case.to_dict() for case in cases])
    for i, contract in enumerate(contracts):
        for side in ("numerator", "denominator"):
            selector = {k: v for k, v in contract[side].items() if k != "device"}
            if selector and not index.matching(selector):
                wanted = ", ".join(f"{k} = {json.dumps(v, default=str)}"
                                   for k, v in selector.items())
                fail(f"contract[{i}].{side}", f"{{{wanted}}} of contract "
                     f"{contract['name']!r} selects none of this suite's cases, so the "
                     "contract could never pass (is each value the case's, of its type: "
                     "length = 4096, not \"4096\"?)")


def order_cases(cases: Iterable[Case]) -> list[Case]:
    """Series in the order they first appear; within a series, cheapest first (shortest, then
    fewest tokens), so an out-of-memory length stops the longer ones before they start."""
    series: dict[str, list[Case]] = {}
    for case in cases:
        series.setdefault(case.series_key(), []).append(case)
    ordered = []
    for members in series.values():
        ordered.extend(sorted(members, key=lambda c: (c.length, c.tokens)))
    return ordered


def filter_cases(cases: Iterable[Case], *, frameworks=None, device=None,
                 patterns=None) -> list[Case]:
    """Cases of the given frameworks; ``device`` replaces each case's device; ``patterns``
    keep cases whose label contains every one of them (``--filter lsh --filter L=4096``)."""
    out = []
    for case in cases:
        if frameworks and case.framework not in frameworks:
            continue
        if device:
            case = dataclasses.replace(case, device=device)
            if case.kernel is not None and device == "cpu" and case.resolved_kernel != "portable":
                raise SuiteError(f"--device cpu: case {case.label()} asks for kernel "
                                 f"{case.kernel!r}, which runs on CUDA only")
        if patterns and not all(p in case.label() for p in patterns):
            continue
        out.append(case)
    return out
