"""The pure parts of attnbench.layer_bench, and that failing cases become rows.

Nothing here asserts on timings; only the last test runs real (tiny) layers.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import textwrap

import pytest

from attnbench import layer_bench as lb


def _ok(impl, length, n_hashes, median, mem=10.0):
    return {
        "impl": impl,
        "length": length,
        "n_hashes": n_hashes,
        "n_buckets": None,
        "status": "ok",
        "median_s": median,
        "iqr_s": 0.0,
        "mem_MB": mem,
    }


# ----------------------------------------------------------------- argument parsing


def test_parse_defaults():
    args = lb.parse_args([])
    assert args.impls == ["lsh", "full-fused"]
    assert args.lengths == [1024, 4096, 16384]
    assert args.n_hashes == [1, 4]
    assert (args.d_model, args.heads, args.chunk_len) == (256, 4, 64)
    assert args.n_buckets is None  # auto
    assert (args.repeats, args.threads, args.device, args.timeout) == (5, 2, "cpu", 300.0)


def test_parse_lists_and_buckets():
    args = lb.parse_args(
        [
            "--impls",
            "lsh,full-naive",
            "--lengths",
            "128,256",
            "--n-hashes",
            "2",
            "--n-buckets",
            "8",
            "--csv",
            "out.csv",
        ]
    )
    assert args.impls == ["lsh", "full-naive"]
    assert args.lengths == [128, 256]
    assert args.n_hashes == [2]
    assert args.n_buckets == 8
    assert args.csv == "out.csv"
    assert lb.parse_args(["--n-buckets", "auto"]).n_buckets is None


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--lengths", "1024,x"], "'1024,x'"),
        (["--lengths", "0"], "'0'"),
        (["--n-buckets", "7"], "got 7"),
        (["--impls", "lsh,nope"], "nope"),
        (["--d-model", "250", "--heads", "4"], "250"),
        (["--device", "tpu"], "'tpu'"),
    ],
)
def test_parse_errors_name_the_bad_value(argv, fragment, capsys):
    with pytest.raises(SystemExit):
        lb.parse_args(argv)
    assert fragment in capsys.readouterr().err


def test_expand_cases_runs_full_attention_once_per_length():
    cases = lb.expand_cases(
        ["lsh", "full-fused"], [1024, 2048], [1, 4], None, chunk_len=64, repeats=1
    )
    keys = [(c.impl, c.length, c.n_hashes, c.n_buckets) for c in cases]
    assert keys == [
        ("lsh", 1024, 1, 32),
        ("lsh", 1024, 4, 32),
        ("full-fused", 1024, None, None),
        ("lsh", 2048, 1, 64),
        ("lsh", 2048, 4, 64),
        ("full-fused", 2048, None, None),
    ]
    fixed = lb.expand_cases(["lsh"], [1024], [1], 256, chunk_len=64)
    assert fixed[0].n_buckets == 256


def test_case_json_round_trip_and_unknown_field():
    case = lb.Case(impl="lsh", length=128, n_hashes=2, n_buckets=4, plugins=["x.py"])
    assert lb.Case.from_json(case.to_json()) == case
    with pytest.raises(ValueError, match="bogus"):
        lb.Case.from_json(json.dumps({"impl": "lsh", "length": 1, "n_hashes": 1, "bogus": 1}))


# ----------------------------------------------------------------- output


def test_table_ratios_and_csv(tmp_path):
    rows = [
        _ok("lsh", 1024, 1, 0.5),
        _ok("lsh", 1024, 4, 2.0),
        _ok("full-fused", 1024, None, 1.0),
        {
            **lb.base_row(lb.Case(impl="full-naive", length=1024, n_hashes=None)),
            "status": "oom",
            "error": "worker killed by SIGKILL",
        },
    ]
    table = lb.format_table(rows).splitlines()
    assert table[0].split() == list(lb.TABLE_COLUMNS)
    assert len({len(line) for line in table[:6]}) == 1  # fixed width
    assert table[5].split()[:5] == ["full-naive", "1024", "-", "-", "oom"]
    assert "SIGKILL" in table[6]

    ratios = lb.format_ratios(rows)
    assert "n_hashes=1   lsh/full-fused time = 0.500" in ratios
    assert "n_hashes=4   lsh/full-fused time = 2.000" in ratios
    assert lb.ratio(rows, "lsh", "full-naive", 1024, 1) is None  # failed rows give no ratio
    assert lb.format_ratios([_ok("lsh", 1024, 1, 0.5)]) == ""

    path = tmp_path / "rows.csv"
    lb.write_csv(rows, path)
    with open(path) as f:
        read = list(csv.DictReader(f))
    assert [r["status"] for r in read] == ["ok", "ok", "ok", "oom"]
    assert read[0]["median_s"] == "0.5"


def test_last_json_line_skips_noise():
    assert lb._last_json_line('warning\n{"status": "ok"}\n\n') == {"status": "ok"}
    assert lb._last_json_line("Traceback ...\n") is None


# ----------------------------------------------------------------- failing cases


@pytest.fixture
def torch_global_state():
    """measure() sets torch's thread count and seed; give the test session them back."""
    torch = pytest.importorskip("torch")
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.random.set_rng_state(rng)


def test_worker_turns_exceptions_into_rows(monkeypatch, capsys, torch_global_state):
    def boom(length, n_hashes, args):
        raise RuntimeError(f"boom at length {length}")

    def oom(length, n_hashes, args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setitem(lb.REGISTRY, "boom", lb.Impl("boom", boom, True))
    monkeypatch.setitem(lb.REGISTRY, "oom", lb.Impl("oom", oom, True))
    for name, status, text in [
        ("boom", "error", "boom at length 128"),
        ("oom", "oom", "out of memory"),
    ]:
        case = lb.Case(impl=name, length=128, n_hashes=1, repeats=1)
        assert lb.worker_main(case.to_json()) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["status"] == status and text in row["error"]


def _plugin(tmp_path, body):
    path = tmp_path / "plugin.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_run_case_unknown_impl_is_an_error_row():
    row = lb.run_case(lb.Case(impl="no-such-impl", length=128, n_hashes=1), timeout=60)
    assert row["status"] == "error"
    assert "no-such-impl" in row["error"]
    assert (row["impl"], row["length"]) == ("no-such-impl", 128)


def test_run_case_killed_worker_is_an_oom_row(tmp_path):
    plugin = _plugin(
        tmp_path,
        """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    row = lb.run_case(lb.Case(impl="lsh", length=128, n_hashes=1, plugins=[plugin]), timeout=60)
    assert row["status"] == "oom" and "SIGKILL" in row["error"]


def test_run_case_crashed_worker_is_an_error_row(tmp_path):
    plugin = _plugin(
        tmp_path,
        """
        import os, sys
        print("dying", file=sys.stderr, flush=True)
        os._exit(3)
    """,
    )
    row = lb.run_case(lb.Case(impl="lsh", length=128, n_hashes=1, plugins=[plugin]), timeout=60)
    assert row["status"] == "error"
    assert "code 3" in row["error"] and "dying" in row["error"]


def test_run_case_timeout_is_a_row():
    row = lb.run_case(lb.Case(impl="lsh", length=128, n_hashes=1), timeout=0.01)
    assert row["status"] == "timeout"


def test_plugin_registers_builders(tmp_path):
    plugin = _plugin(
        tmp_path,
        """
        from attnbench import layer_bench as lb

        @lb.register("from-plugin", hashed=False)
        def make(length, n_hashes, args):
            raise NotImplementedError
    """,
    )
    try:
        lb.load_plugin(plugin)
        assert lb.get_impl("from-plugin").hashed is False
    finally:
        lb.REGISTRY.pop("from-plugin", None)
    with pytest.raises(FileNotFoundError, match="missing.py"):
        lb.load_plugin(str(tmp_path / "missing.py"))


# ----------------------------------------------------------------- one real tiny run


def _have_torch_impl() -> bool:
    try:
        return importlib.util.find_spec("attnbench.torch_impl.lsh_attention") is not None
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _have_torch_impl(), reason="attnbench.torch_impl not written yet")
def test_real_tiny_cases():
    pytest.importorskip("torch")
    cases = lb.expand_cases(
        ["lsh", "full-naive"], [128], [2], 4, chunk_len=32, repeats=2, warmup=1, threads=1
    )
    rows = lb.run_cases(cases, timeout=120, progress=False)
    assert [(r["impl"], r["status"]) for r in rows] == [("lsh", "ok"), ("full-naive", "ok")], rows
    for r in rows:
        assert len(r["times_s"]) == 2
        assert r["iqr_s"] >= 0 and r["mem_MB"] is not None
        assert r["threads"] == 1
        assert r["mem_method"] in ("vmhwm", "ru_maxrss (not reset: may include pre-step peaks)")
