"""A sweep of bad inputs, as a hostile or careless user would give them: suite files, command
line options, store and meta files, output paths. Each must be refused with exit 2 and a
message naming what is wrong (no traceback: in-process, an exception fails the test), and
nothing that was there before may be lost or changed.

``python -m pytest tests/test_bad_inputs.py -q`` runs it; ``len(SUITES) + ...`` is the count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attnbench.cli import main
from tests.report.conftest import DATA

CONTRACT = '[[contract]]\nname = "c"\nmetric = "time_median_s"\n'
OK_SWEEP = {"variant": "lsh", "framework": "torch", "mode": "forward", "length": 64,
            "chunk_len": 32}


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if value == float("inf"):
        return "inf"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def sweep_with(**changes) -> str:
    fields = {**OK_SWEEP, **changes}
    body = "\n".join(f"{k} = {toml_value(v)}" for k, v in fields.items() if v is not None)
    return f'name = "bad"\n[[sweep]]\n{body}\n'


# (id, suite text or bytes, what the message must say)
SUITES = [
    # the name, which becomes a directory
    ("name-absolute", sweep_with().replace('"bad"', '"/tmp/x"'), "name"),
    ("name-escapes", sweep_with().replace('"bad"', '"../../../../tmp/x"'), "name"),
    ("name-dot", sweep_with().replace('"bad"', '"."'), "name"),
    ("name-dotdot", sweep_with().replace('"bad"', '".."'), "name"),
    ("name-empty", sweep_with().replace('"bad"', '""'), "name"),
    ("name-number", sweep_with().replace('"bad"', "5"), "name"),
    ("name-space", sweep_with().replace('"bad"', '"a b"'), "name"),
    ("name-long", sweep_with().replace('"bad"', '"' + "x" * 65 + '"'), "name"),
    ("name-hidden", sweep_with().replace('"bad"', '".hidden"'), "name"),
    ("name-slash", sweep_with().replace('"bad"', '"a/b"'), "name"),
    ("name-missing", sweep_with().replace('name = "bad"\n', ""), "name"),
    # the file's shape
    ("unknown-top-key", "bogus = 1\n" + sweep_with(), "bogus"),
    ("no-sweep", 'name = "bad"\n', "sweep"),
    ("sweep-number", 'name = "bad"\nsweep = 5\n', "sweep"),
    ("sweep-empty", 'name = "bad"\nsweep = []\n', "sweep"),
    ("sweep-not-table", 'name = "bad"\nsweep = [5]\n', "sweep[0]"),
    ("defaults-number", 'defaults = 5\n' + sweep_with(), "defaults"),
    ("exclude-number", 'exclude = 5\n' + sweep_with(), "exclude"),
    ("contract-number", 'contract = 5\n' + sweep_with(), "contract"),
    ("contract-not-table", 'contract = [5]\n' + sweep_with(), "contract[0]"),
    ("description-number", 'description = 5\n' + sweep_with(), "description"),
    ("plugins-number", 'plugins = 5\n' + sweep_with(), "plugins"),
    ("plugins-not-strings", 'plugins = [5]\n' + sweep_with(), "plugins"),
    ("everything-excluded", sweep_with() + 'exclude = [{length = 64}]\n', "no cases"),
    # case fields
    ("unknown-field", sweep_with(lenght=64), "lenght"),
    ("variant-unknown", sweep_with(variant="nope"), "variant"),
    ("variant-nested", sweep_with(variant=[["lsh"]]), "variant"),
    ("variant-number", sweep_with(variant=5), "variant"),
    ("framework", sweep_with(framework="mxnet"), "framework"),
    ("mode", sweep_with(mode="fast"), "mode"),
    ("mode-of-another-kind", sweep_with(mode="train-step"), "mode"),
    ("length-negative", sweep_with(length=-64), "length"),
    ("length-text", sweep_with(length="abc"), "length"),
    ("length-float", sweep_with(length=64.5), "length"),
    ("length-empty-list", sweep_with(length=[]), "length"),
    ("length-not-chunks", sweep_with(length=100), "length"),
    ("n-buckets-odd", sweep_with(n_buckets=7), "n_buckets"),
    ("n-buckets-text", sweep_with(n_buckets="many"), "n_buckets"),
    ("n-hashes-zero", sweep_with(n_hashes=0), "n_hashes"),
    ("d-model-heads", sweep_with(d_model=30), "d_model"),
    ("device", sweep_with(device="tpu"), "device"),
    ("device-index", sweep_with(device="cuda:abc"), "device"),
    ("dtype", sweep_with(dtype="float64"), "dtype"),
    ("seed-text", sweep_with(seed="abc"), "seed"),
    ("seed-float", sweep_with(seed=1.5), "seed"),
    ("seed-negative", sweep_with(seed=-5), "seed"),
    ("timeout-nan", sweep_with(timeout_s=float("nan")), "timeout_s"),
    ("timeout-negative", sweep_with(timeout_s=-1), "timeout_s"),
    ("timeout-text", sweep_with(timeout_s="soon"), "timeout_s"),
    ("budget-inf", sweep_with(time_budget_s=float("inf")), "time_budget_s"),
    ("target-zero", sweep_with(target_rel_iqr=0), "target_rel_iqr"),
    ("causal-text", sweep_with(causal="yes"), "causal"),
    ("options-number", sweep_with(options=5), "options"),
    ("options-timed-mode", sweep_with(options={"steps": 3}), "options"),
    ("options-approx-unknown", sweep_with(mode="approx", options={"inptus": "random"}),
     "inptus"),
    ("options-approx-kind", sweep_with(mode="approx", options={"inputs": "bogus"}), "inputs"),
    ("options-approx-seeds", sweep_with(mode="approx", options={"n_seeds": 0}), "n_seeds"),
    ("threads-zero", sweep_with(threads=0), "threads"),
    ("warmup-negative", sweep_with(warmup=-1), "warmup"),
    ("memory-limit-zero", sweep_with(memory_limit_mb=0), "memory_limit_mb"),
    ("repeats-order", sweep_with(min_repeats=5, max_repeats=2), "max_repeats"),
    ("batch-and-tokens", sweep_with(batch=2, tokens_per_batch=128), "tokens_per_batch"),
    ("tokens-not-multiple", sweep_with(tokens_per_batch=100), "tokens_per_batch"),
    ("kernel-unknown", sweep_with(kernel="cuda"), "kernel"),
    ("kernel-on-cpu", sweep_with(kernel="triton"), "kernel"),
    ("kernel-other-framework", sweep_with(kernel="pallas", device="cuda"), "kernel"),
    # contracts
    ("contract-no-bound", sweep_with() + CONTRACT + 'numerator = {length = 64}\n'
     'denominator = {length = 64}\n', "contract[0]"),
    ("contract-nan", sweep_with() + CONTRACT + 'numerator = {length = 64}\n'
     'denominator = {length = 64}\nmax_ratio = nan\n', "max_ratio"),
    ("contract-text-bound", sweep_with() + CONTRACT + 'numerator = '
     '{length = 64}\ndenominator = {length = 64}\nmax_ratio = "half"\n', "max_ratio"),
    ("contract-unknown-key", sweep_with() + CONTRACT + 'numerator = '
     '{length = 64}\ndenominator = {length = 64}\nmax_ratio = 1\nbogus = 1\n', "bogus"),
    ("contract-selector-number", sweep_with() + CONTRACT + 'numerator = 5\n'
     'denominator = {length = 64}\nmax_ratio = 1\n', "numerator"),
    # files
    ("binary", b"\x00\xff\xfe binary", "not a UTF-8 text file"),
    ("latin-1", 'name = "caf\xe9"\n'.encode("latin-1"), "not a UTF-8 text file"),
    ("bad-toml", "name = [unclosed\n", "not valid TOML"),
    ("empty-file", "", "name"),
    # plugins
    ("plugin-exits", 'plugins = ["exits.py"]\n' + sweep_with(), "sys.exit"),
    ("plugin-missing", 'plugins = ["missing.py"]\n' + sweep_with(), "not found"),
    ("plugin-not-py", 'plugins = ["dir/plugin.txt"]\n' + sweep_with(), ".py file"),
    ("plugin-bad-name", 'plugins = ["my-plugin"]\n' + sweep_with(), "module name"),
    ("plugin-raises", 'plugins = ["raises.py"]\n' + sweep_with(), "RuntimeError"),
    # size
    ("too-many-cases", sweep_with(length=[32 * i for i in range(1, 401)],
                                  n_hashes=list(range(1, 301))), "limit of 100,000"),
]


@pytest.mark.parametrize("text, why", [(t, w) for _, t, w in SUITES],
                         ids=[i for i, _, _ in SUITES])
def test_a_bad_suite_file_is_refused(tmp_path, capsys, text, why):
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('broken plugin')\n")
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for argv in (["run", str(path), "--dry-run"], ["run", str(path), "--out",
                                                   str(tmp_path / "out")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error" in err and why in err, err
    assert not (tmp_path / "out").exists()


def test_a_suite_given_as_a_directory_or_missing_is_refused(tmp_path, capsys):
    for path in (tmp_path, tmp_path / "missing.toml"):
        assert main(["run", str(path), "--dry-run"]) == 2
        assert str(path) in capsys.readouterr().err


OPTIONS = [
    ["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "nan"], ["--timeout", "inf"],
    ["--memory-limit", "-5"], ["--memory-limit", "0"], ["--device", "cuda:abc"],
    ["--device", "tpu"], ["--device", ""], ["--max-cases", "0"],
    ["--filter", "no case has this label"],
]
ARGPARSE_OPTIONS = [
    ["--timeout", "soon"], ["--memory-limit", "lots"], ["--retry", "ok"],
    ["--retry", "bogus"], ["--retry", ""], ["--framework", "mxnet"], ["--max-cases", "x"],
]


@pytest.mark.parametrize("option", OPTIONS, ids=[" ".join(o) for o in OPTIONS])
def test_a_bad_command_line_setting_is_refused(tmp_path, capsys, option):
    assert main(["run", "smoke", "--out", str(tmp_path / "out"), *option]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ARGPARSE_OPTIONS,
                         ids=[" ".join(o) for o in ARGPARSE_OPTIONS])
def test_a_malformed_command_line_value_is_a_usage_error(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as raised:
        main(["run", "smoke", "--out", str(tmp_path / "out"), *option])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "attnbench run: error: argument" in err and option[0] in err, err
    assert not (tmp_path / "out").exists()


def test_a_compile_cache_that_cannot_be_a_directory_is_refused(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("")
    for cache in (taken, taken / "below"):
        assert main(["run", "smoke", "--out", str(tmp_path / "out"), "--compile-cache",
                     str(cache)]) == 2
        err = capsys.readouterr().err
        assert f"--compile-cache {cache}: cannot be a directory" in err, err
        assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # one or the other
        main(["run", "smoke", "--compile-cache", str(tmp_path), "--no-compile-cache"])


def _meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


# (id, how to break a copy of a good run) -> every reader refuses it, naming the file
BROKEN_RUNS = [
    ("meta-missing", lambda run: (run / "meta.json").unlink()),
    ("meta-not-json", lambda run: (run / "meta.json").write_text("{not json")),
    ("meta-binary", lambda run: (run / "meta.json").write_bytes(b"\xff\xfe\x00")),
    ("meta-a-list", lambda run: (run / "meta.json").write_text("[1, 2]")),
    ("meta-schema", lambda run: (run / "meta.json").write_text(
        json.dumps({**_meta(run), "schema": 99}))),
    ("meta-unknown-key", lambda run: (run / "meta.json").write_text(
        json.dumps({**_meta(run), "bogus": 1}))),
    ("meta-no-run-id", lambda run: (run / "meta.json").write_text(
        json.dumps({k: v for k, v in _meta(run).items() if k != "run_id"}))),
    ("meta-contracts-number", lambda run: (run / "meta.json").write_text(
        json.dumps({**_meta(run), "suite": {**_meta(run)["suite"], "contracts": 5}}))),
    ("meta-argv-text", lambda run: (run / "meta.json").write_text(
        json.dumps({**_meta(run), "argv": "attnbench run"}))),
    ("meta-environment-key", lambda run: (run / "meta.json").write_text(
        json.dumps({**_meta(run), "environment": {"git_commit": "abc"}}))),
    ("meta-is-a-directory", lambda run: ((run / "meta.json").unlink(),
                                         (run / "meta.json").mkdir())),
]


@pytest.mark.parametrize("command", ["export", "report", "compare", "check"])
@pytest.mark.parametrize("breaks", [b for _, b in BROKEN_RUNS], ids=[i for i, _ in BROKEN_RUNS])
def test_every_reader_refuses_a_broken_run(tmp_path, capsys, command, breaks):
    run = tmp_path / "run"
    shutil.copytree(DATA / "torch-cpu", run)
    breaks(run)
    before = {p.name: (p.read_bytes() if p.is_file() else None) for p in run.iterdir()}
    argv = {"export": ["export", str(run), "--csv", str(tmp_path / "out.csv")],
            "report": ["report", str(run), "-o", str(tmp_path / "report")],
            "compare": ["compare", str(run), str(DATA / "torch-cpu")],
            "check": ["check", str(run)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "error" in err, err
    after = {p.name: (p.read_bytes() if p.is_file() else None) for p in run.iterdir()}
    assert after == before  # a reader never changes what it reads


def test_unreadable_rows_are_refused_by_the_judges_and_said_by_the_rest(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(DATA / "torch-cpu", run)
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    lines[3] = '{"garbled": \n'
    lines[5] = "[1, 2]\n"
    (run / "results.jsonl").write_text("".join(lines))
    assert main(["compare", str(run), str(DATA / "torch-cpu")]) == 2
    assert "2 row(s) could not be read" in capsys.readouterr().err
    assert main(["check", str(run)]) == 2
    assert "results.jsonl:4" in capsys.readouterr().err
    # accepted on purpose: export still writes the rows it can read, and says which it cannot
    assert main(["export", str(run), "--csv", str(tmp_path / "out.csv")]) == 0
    assert "results.jsonl:6" in capsys.readouterr().err
