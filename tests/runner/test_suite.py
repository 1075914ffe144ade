"""Suite parsing, validation (every error names file, key and rule), expansion, stable ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnbench.runner.case import Case
from attnbench.runner.command import SUITES_DIR
from attnbench.runner.suite import SuiteError, load_suite, parse_suite

BASE = {"name": "t", "sweep": [{"variant": "lsh", "framework": "torch",
                                "mode": "forward-backward", "length": 256}]}


def suite(**changes):
    data = {**BASE, **changes}
    return parse_suite(data, "t.toml")


def sweep(**axes):
    return suite(sweep=[{**BASE["sweep"][0], **axes}])


def test_product_expansion_count():
    s = sweep(variant=["lsh", "full-fused"], framework=["torch", "jax"], length=[128, 256],
              n_hashes=[1, 2, 4])
    # lsh: 2 frameworks x 2 lengths x 3 hashes; full attention ignores n_hashes: 2 x 2.
    assert len(s.cases) == 12 + 4


def test_axes_that_do_not_apply_are_dropped():
    s = sweep(variant="full-fused", n_hashes=[1, 4], chunk_len=32, depth=[1, 2])
    (case,) = s.cases
    assert (case.n_hashes, case.n_buckets, case.chunk_len, case.depth) == (None, None, None, 1)


def test_auto_buckets_and_tokens_per_batch():
    s = sweep(length=[256, 512], tokens_per_batch=1024, chunk_len=64)
    assert [(c.length, c.batch, c.n_buckets) for c in s.cases] == [(256, 4, 8), (512, 2, 16)]


def test_excludes_sweep_and_global():
    s = suite(sweep=[{**BASE["sweep"][0], "length": [128, 256, 512],
                      "exclude": [{"length": 512}]}], exclude=[{"length": 128}])
    assert [c.length for c in s.cases] == [256]


def test_options_list_is_an_axis():
    s = sweep(mode="approx", options=[{"inputs": "random"}, {"inputs": "clustered"}])
    assert sorted(c.options["inputs"] for c in s.cases) == ["clustered", "random"]


def test_cheapest_first_within_a_series():
    s = sweep(length=[1024, 256, 512], n_hashes=[2, 1])
    by_series = {}
    for c in s.cases:
        by_series.setdefault(c.n_hashes, []).append(c.length)
    assert by_series == {2: [256, 512, 1024], 1: [256, 512, 1024]}


def test_case_id_is_stable_and_ignores_how():
    a = sweep().cases[0]
    b = dataclasses.replace(a, suite="other", max_repeats=99, timeout_s=1.0, threads=7)
    assert a.case_id == b.case_id
    assert a.case_id != dataclasses.replace(a, length=512).case_id
    # Pinned: a change to Case's fields or the hash breaks resume and compare across versions.
    assert Case(variant="lsh", framework="torch", mode="forward", length=64).case_id \
        == "760c403dc525"


@pytest.mark.parametrize("changes, key, rule", [
    ({"name": ""}, "name", "required"),
    # the name becomes reports/runs/<name>: nothing that leaves it or is it
    ({"name": "/tmp/x"}, "name", "letters, digits"),
    ({"name": "../../../../tmp/x"}, "name", "letters, digits"),
    ({"name": "."}, "name", "letters, digits"),
    ({"name": ".."}, "name", "letters, digits"),
    ({"name": "a/b"}, "name", "letters, digits"),
    ({"name": ".hidden"}, "name", "letters, digits"),
    ({"name": "x" * 65}, "name", "1-64 characters"),
    ({"name": 5}, "name", "required"),
    # every value checked before anything runs (issue 12 item 8)
    ({"sweep": [{**BASE["sweep"][0], "timeout_s": float("nan")}]}, "timeout_s",
     "must be a finite number"),
    ({"sweep": [{**BASE["sweep"][0], "time_budget_s": float("inf")}]}, "time_budget_s",
     "must be a finite number"),
    ({"sweep": [{**BASE["sweep"][0], "seed": "abc"}]}, "sweep[0].seed", "integer >= 0"),
    ({"sweep": [{**BASE["sweep"][0], "seed": 1.5}]}, "sweep[0].seed", "integer >= 0"),
    ({"sweep": [{**BASE["sweep"][0], "seed": -5}]}, "sweep[0].seed", "integer >= 0"),
    ({"sweep": [{**BASE["sweep"][0], "options": {"steps": 3}}]}, "sweep[0].options",
     "mode 'forward-backward' takes no options"),
    ({"sweep": [{**BASE["sweep"][0], "mode": "approx", "options": {"inptus": "random"}}]},
     "sweep[0].options", "unknown key(s) ['inptus']"),
    ({"sweep": [{**BASE["sweep"][0], "mode": "approx", "options": {"inputs": "bogus"}}]},
     "sweep[0].options", "options.inputs='bogus': must be one of random, clustered"),
    ({"sweep": [{**BASE["sweep"][0], "variant": [["lsh"]]}]}, "sweep[0].variant",
     "is not a variant"),
    ({"contract": 5}, "contract", "must be [[contract]] tables"),
    ({"contract": [{"name": "c", "numerator": {}, "denominator": {},
                    "max_ratio": float("nan")}]}, "contract[0].max_ratio",
     "must be a finite number"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"sweep": []}, "sweep", "at least one"),
    ({"sweep": [{"variant": "lsh", "framework": "torch", "mode": "forward"}]},
     "sweep[0].length", "required"),
    ({"sweep": [{**BASE["sweep"][0], "lenght": 5}]}, "sweep[0].lenght", "unknown key"),
    ({"sweep": [{**BASE["sweep"][0], "variant": "nope"}]}, "sweep[0].variant",
     "is not a variant"),
    ({"sweep": [{**BASE["sweep"][0], "framework": "mxnet"}]}, "sweep[0].framework",
     "must be one of torch, jax"),
    ({"sweep": [{**BASE["sweep"][0], "mode": "train-step"}]}, "sweep[0].mode",
     "is not a mode of layer variant 'lsh'"),
    ({"sweep": [{**BASE["sweep"][0], "length": 100}]}, "sweep[0].length",
     "must be a multiple of chunk_len=64"),
    ({"sweep": [{**BASE["sweep"][0], "n_buckets": 7}]}, "sweep[0].n_buckets", "even integer"),
    ({"sweep": [{**BASE["sweep"][0], "length": -64}]}, "sweep[0].length", "integer >= 1"),
    ({"sweep": [{**BASE["sweep"][0], "d_model": 30}]}, "sweep[0].d_model",
     "not divisible by n_heads=4"),
    ({"sweep": [{**BASE["sweep"][0], "device": "tpu"}]}, "sweep[0].device", "cpu, cuda"),
    ({"sweep": [{**BASE["sweep"][0], "batch": 2, "tokens_per_batch": 512}]},
     "sweep[0].tokens_per_batch", "not both"),
    ({"sweep": [{**BASE["sweep"][0], "tokens_per_batch": 300}]},
     "sweep[0].tokens_per_batch", "not a multiple of length=256"),
    ({"sweep": [{**BASE["sweep"][0], "n_hashes": []}]}, "sweep[0].n_hashes", "empty list"),
    ({"sweep": [{**BASE["sweep"][0], "min_repeats": 5, "max_repeats": 2}]},
     "sweep[0].max_repeats", ">= min_repeats=5"),
    ({"sweep": [{**BASE["sweep"][0], "exclude": [{"colour": 1}]}]},
     "sweep[0].exclude[0].colour", "unknown case field"),
    ({"contract": [{"name": "c", "metric": "time_median_s", "numerator": {"variant": "lsh"},
                    "denominator": {"variant": "full-fused"}}]}, "contract[0]",
     "max_ratio and/or min_ratio"),
    ({"contract": [{"name": "c", "metric": "time_median_s", "numerator": {"size": 1},
                    "denominator": {"variant": "lsh"}, "max_ratio": 1}]},
     "contract[0].numerator.size", "unknown case field"),
    ({"contract": [{"name": "c", "metric": "m", "numerator": {"variant": "lsh"},
                    "denominator": {"variant": "lsh"}, "max_ratio": -1}]},
     "contract[0].max_ratio", "positive number"),
])
def test_errors_name_file_key_and_rule(changes, key, rule):
    with pytest.raises(SuiteError) as err:
        suite(**changes)
    message = str(err.value)
    assert message.startswith("t.toml: "), message
    assert key in message and rule in message, message


def test_a_binary_suite_file_is_a_clear_error(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = \"x\"\n\xff\xfe\x00")
    with pytest.raises(SuiteError, match="binary.toml: not a UTF-8 text file"):
        load_suite(binary)


def test_a_suite_larger_than_the_case_limit_is_refused_naming_the_count():
    data = {**BASE, "sweep": [{**BASE["sweep"][0], "length": [64 * i for i in range(1, 13)],
                               "n_hashes": [1, 2, 4]}]}
    with pytest.raises(SuiteError, match=r"sweep\[0\]: expands to 36 case\(s\).*limit of 30"):
        parse_suite(data, "t.toml", max_cases=30)
    assert len(parse_suite(data, "t.toml", max_cases=36).cases) == 36


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(SuiteError, match="bad.toml: not valid TOML"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="missing.toml: cannot read suite"):
        load_suite(tmp_path / "missing.toml")


@pytest.mark.parametrize("path", sorted(SUITES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_suites_are_valid(path: Path):
    s = load_suite(path)
    assert s.name == path.stem
    assert s.description.strip()
    assert len({c.case_id for c in s.cases}) == len(s.cases)


def test_shipped_suites_exist():
    names = {p.stem for p in SUITES_DIR.glob("*.toml")}
    assert {"smoke", "quickstart", "paper-speed", "hashes-buckets", "memory-depth",
            "gpu-long", "ci"} <= names


def test_kernel_auto_resolves_per_framework_and_device_and_is_one_case_with_its_value():
    s = sweep(framework=["torch", "jax"], device="cuda", kernel=["auto", "portable"])
    assert sorted((c.framework, c.resolved_kernel) for c in s.cases) == [
        ("jax", "pallas"), ("jax", "portable"), ("torch", "portable"), ("torch", "triton")]
    # auto and the kernel it names are one case; on the CPU auto is the portable core.
    explicit = sweep(device="cuda", kernel="triton").cases[0]
    assert sweep(device="cuda").cases[0].case_id == explicit.case_id
    assert sweep(kernel="auto").cases[0].case_id == sweep(kernel="portable").cases[0].case_id
    assert "triton" in explicit.label()
    assert sweep(variant="full-fused").cases[0].kernel is None


@pytest.mark.parametrize(("axes", "message"), [
    ({"kernel": "pallas"}, r"kernel: 'pallas' is not a torch kernel \(it has auto, portable, "
                           r"triton\)"),
    ({"kernel": "triton"}, r"kernel: 'triton' runs on CUDA only"),
    ({"kernel": "cuda"}, r"kernel: 'cuda' must be one of auto, portable, triton, pallas"),
    ({"mode": "approx", "device": "cuda", "kernel": "portable"},
     r"kernel: 'portable' is not what mode 'approx' runs"),
])
def test_kernel_errors_name_the_value_and_the_rule(axes, message):
    with pytest.raises(SuiteError, match=message):
        sweep(**axes)


def test_device_override_to_cpu_refuses_a_fused_kernel():
    from attnbench.runner.suite import filter_cases

    cases = sweep(device="cuda", kernel="triton").cases
    with pytest.raises(SuiteError, match=r"--device cpu: case .* asks for kernel 'triton'"):
        filter_cases(cases, device="cpu")
    (moved,) = filter_cases(sweep(kernel="auto").cases, device="cuda")
    assert moved.resolved_kernel == "triton"


def test_a_plugin_variant_offers_only_the_modes_it_implements(tmp_path):
    """A peer's LSH layer is not attnbench's core: approx would measure ours under its name."""
    plugin = tmp_path / "peer_plugin.py"
    plugin.write_text(
        "from attnbench.variants import Variant, register_variant\n"
        "register_variant(Variant('peer-lsh-test', 'a peer LSH layer', 'layer', 'lsh',\n"
        "                         frameworks=('torch',), build=lambda case, **kw: None))\n")
    text = (f'name = "peer"\nplugins = ["{plugin}"]\n[[sweep]]\nvariant = "peer-lsh-test"\n'
            'framework = "torch"\nmode = "{mode}"\nlength = 64\nn_hashes = 1\n')
    path = tmp_path / "peer.toml"
    path.write_text(text.replace("{mode}", "forward-backward"))
    assert [c.mode for c in load_suite(path).cases] == ["forward-backward"]
    path.write_text(text.replace("{mode}", "approx"))
    with pytest.raises(SuiteError, match=r"mode.*'approx' is not a mode of layer variant "
                                         r"'peer-lsh-test' \(its modes: forward, "
                                         r"forward-backward"):
        load_suite(path)


@pytest.mark.parametrize("body, ref, why", [
    ("import sys\nsys.exit(3)\n", "exits.py", "called sys.exit(3) while loading"),
    (None, "my-plugin", "neither a .py file nor a dotted module name"),
    (None, "dir/", "a path must name a .py file"),
    (None, "no_such_module_attnbench_test", "No module named"),
    ("raise RuntimeError('broken')\n", "broken.py", "RuntimeError: broken"),
])
def test_a_plugin_that_cannot_load_is_a_suite_error(tmp_path, body, ref, why):
    if body is not None:
        (tmp_path / ref).write_text(body)
    path = tmp_path / "p.toml"
    path.write_text(f'name = "p"\nplugins = ["{ref}"]\n[[sweep]]\nvariant = "lsh"\n'
                    'framework = "torch"\nmode = "forward"\nlength = 64\n')
    with pytest.raises(SuiteError, match="plugins") as raised:
        load_suite(path)
    assert why in str(raised.value), raised.value


def test_listing_the_suites_runs_no_plugin(monkeypatch):
    from attnbench.runner import command

    def refuse(ref):
        raise AssertionError(f"attnbench list loaded plugin {ref}")

    monkeypatch.setattr("attnbench.runner.suite.load_plugin", refuse)
    names = [name for name, _ in command.shipped_suites()]
    assert "peers" in names and "quickstart" in names


def test_approx_cases_on_other_inputs_have_other_labels():
    from attnbench.runner.suite import parse_suite

    suite = parse_suite({"name": "s", "sweep": [{
        "variant": "lsh", "framework": "torch", "mode": "approx", "length": 128,
        "chunk_len": 32, "options": [{"inputs": "clustered"}, {"inputs": "random"}, {}]}]})
    labels = [case.label() for case in suite.cases]
    assert labels[0].endswith("inputs=clustered")
    assert labels[1] == labels[2] == "lsh/torch approx L=128 h=1 b=8"  # random: the default


def test_cases_shown_together_get_labels_that_tell_them_apart():
    from attnbench.runner.case import distinct_labels

    suite = parse_suite({"name": "s", "sweep": [{
        "variant": "full-fused", "framework": "torch", "mode": "forward", "length": 256,
        "causal": [False, True], "d_model": [64, 128]}, {
        "variant": "lsh", "framework": "jax", "mode": "forward", "length": 256}]})
    cases = {case.case_id: case.to_dict() for case in suite.cases}
    labels = distinct_labels(cases)
    assert len(set(labels.values())) == len(cases) == 5
    assert sorted(labels.values())[:4] == [
        "full-fused/torch fwd L=256 d_model=128 causal=False",
        "full-fused/torch fwd L=256 d_model=128 causal=True",
        "full-fused/torch fwd L=256 d_model=64 causal=False",
        "full-fused/torch fwd L=256 d_model=64 causal=True"]
    lsh = next(c for c in suite.cases if c.variant == "lsh")
    assert labels[lsh.case_id] == lsh.label()  # a label no other case has stays as it is


def test_excludes_match_as_comparing_each_table_would():
    import itertools

    from attnbench.runner.suite import _Excludes

    excludes = [{"variant": "lsh", "length": 128}, {"length": 256}, {"n_hashes": None},
                {"variant": "full-fused", "n_hashes": 2}, {"options": {"inputs": "random"}},
                {"length": 512.0, "causal": True}, {"options": [1, 2], "length": 64}]
    points = [dict(zip(("variant", "length", "n_hashes", "causal", "options"), values,
                       strict=True))
              for values in itertools.product(["lsh", "full-fused"], [64, 128, 256, 512],
                                              [None, 1, 2], [True, False, 1],
                                              [{}, {"inputs": "random"}, [1, 2]])]
    index = _Excludes(excludes)
    for point in points:
        brute = any(all(point.get(k) == v for k, v in ex.items()) for ex in excludes)
        assert index.match(point.get) == brute, point


def test_an_exclude_on_a_resolved_field_or_an_options_table_removes_its_cases():
    from attnbench.runner.suite import parse_suite

    suite = parse_suite({"name": "s", "sweep": [{
        "variant": ["lsh", "full-fused"], "framework": "torch", "mode": "forward",
        "length": [128, 256], "chunk_len": 32}],
        "exclude": [{"n_buckets": 16}, {"variant": "full-fused", "length": 256}]})
    assert sorted(c.label() for c in suite.cases) == ["full-fused/torch fwd L=128",
                                                      "lsh/torch fwd L=128 h=1"]
    approx = parse_suite({"name": "s", "sweep": [{
        "variant": "lsh", "framework": "torch", "mode": "approx", "length": 128,
        "chunk_len": 32, "options": [{"inputs": "clustered"}, {"inputs": "random"}]}],
        "exclude": [{"options": {"inputs": "random"}}]})
    assert [c.options for c in approx.cases] == [{"inputs": "clustered"}]


def _contract_suite(numerator: dict, denominator: dict) -> dict:
    return {"name": "s", "sweep": [{"variant": ["full-fused", "lsh"], "framework": ["torch", "jax"],
                                    "mode": "forward", "length": [128, 256], "chunk_len": 32}],
            "contract": [{"name": "lsh below full", "metric": "time_median_s", "max_ratio": 1.0,
                          "numerator": numerator, "denominator": denominator}]}


@pytest.mark.parametrize("numerator, why", [
    ({"variant": "lsh", "length": "256"}, '{variant = "lsh", length = "256"}'),  # a string
    ({"variant": "lsh", "length": 2560}, '{variant = "lsh", length = 2560}'),    # a typo
    ({"variant": "lsh", "options": {"inputs": "clustered"}},                  # no such case
     'options = {"inputs": "clustered"}'),
])
def test_a_contract_that_selects_no_case_is_refused_when_the_suite_loads(numerator, why):
    with pytest.raises(SuiteError, match="contract") as raised:
        parse_suite(_contract_suite(numerator, {"variant": "full-fused", "length": 256}))
    message = str(raised.value)
    assert "contract[0].numerator" in message and why in message, message
    assert "'lsh below full'" in message and "could never pass" in message


def test_a_contract_may_select_several_cases_and_any_device():
    # both frameworks match (a --framework filter leaves one), and --device replaces the
    # device, so a cuda selector is not held against a cpu suite
    suite = parse_suite(_contract_suite({"variant": "lsh", "length": 256},
                                        {"variant": "full-fused", "length": 256,
                                         "device": "cuda"}))
    assert len(suite.contracts) == 1


@pytest.mark.parametrize("sweep", [
    {"variant": "local", "mode": "forward"},                                   # the layer
    {"variant": "transformer", "attention": "local", "mode": "train-step"},    # in a model
])
def test_a_case_that_breaks_a_registered_attentions_rule_is_refused_before_the_sweep(sweep):
    with pytest.raises(SuiteError) as raised:
        parse_suite({"name": "s", "sweep": [{**sweep, "framework": "torch",
                                             "length": [128, 100], "chunk_len": 32}]})
    message = str(raised.value)
    assert "L=100" in message and "attention 'local' cannot run this case" in message, message
    assert "length=100: must be a multiple of chunk_len=32" in message


def test_a_plugins_own_case_rule_is_asked_for_every_case_that_runs_it():
    """``check_case`` is the user's: the parser calls it with each case's fields."""
    from attnbench.variants import ATTENTIONS, register_attention
    from tests.registry import forget_attentions

    seen = []

    def even_heads(case):
        seen.append((case["length"], case["n_heads"]))
        if case["n_heads"] % 2:
            raise ValueError(f"n_heads={case['n_heads']}: must be even")

    try:
        register_attention("even-heads", summary="a test attention with a rule",
                           torch=ATTENTIONS["local"].torch, check_case=even_heads)
        sweep = {"variant": "even-heads", "framework": "torch", "mode": "forward",
                 "length": [64, 128], "d_model": 16}
        assert len(parse_suite({"name": "s", "sweep": [{**sweep, "n_heads": 2}]}).cases) == 2
        assert sorted(seen) == [(64, 2), (128, 2)]
        with pytest.raises(SuiteError, match="'even-heads' cannot run this case: n_heads=1"):
            parse_suite({"name": "s", "sweep": [{**sweep, "n_heads": 1}]})
        # a check with a bug of its own is named as one, never a traceback from the parser
        register_attention("buggy-check", summary="a test attention whose check has a bug",
                           torch=ATTENTIONS["local"].torch,
                           check_case=lambda case: case["no_such_field"])
        with pytest.raises(SuiteError) as raised:
            parse_suite({"name": "s", "sweep": [{**sweep, "variant": "buggy-check",
                                                 "n_heads": 2}]})
        assert "attention 'buggy-check': its check_case raised KeyError: 'no_such_field'" \
            in str(raised.value), raised.value
    finally:
        forget_attentions("even-heads", "buggy-check")
