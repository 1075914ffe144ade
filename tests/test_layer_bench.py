"""The pure parts of attnbench.layer_bench, and that failing cases become rows.

Nothing here asserts on timings; only the last tests run real (tiny) layers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
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


def test_ratio_sections_include_jax_over_torch_lsh():
    rows = [
        _ok("lsh", 16384, 1, 2.0),
        _ok("lsh", 16384, 4, 4.0),
        _ok("jax-lsh", 16384, 1, 2.5),
        _ok("jax-lsh", 16384, 4, 8.0),
        _ok("full-fused", 16384, None, 20.0),
    ]
    text = lb.format_all_ratios(rows)
    first, second = text.split("\n\n")
    assert first.startswith("ratios (lsh / full-fused median time, same run):")
    assert "n_hashes=4   lsh/full-fused time = 0.200" in first
    assert second.startswith("ratios (jax-lsh / lsh median time, same run; target <= 1.5):")
    assert "length=16384  n_hashes=1   jax-lsh/lsh time = 1.250  PASS" in second
    assert "length=16384  n_hashes=4   jax-lsh/lsh time = 2.000  FAIL" in second
    # Only the sections whose rows ran appear.
    assert lb.format_all_ratios(rows[2:4]) == ""
    assert lb.format_all_ratios(rows[:4]).startswith("ratios (jax-lsh / lsh")


def test_registry_knows_each_framework():
    assert lb.get_impl("lsh").framework == "torch"
    for name, hashed in [("jax-lsh", True), ("jax-full-fused", False), ("jax-full-naive", False)]:
        impl = lb.get_impl(name)
        assert (impl.framework, impl.hashed) == ("jax", hashed)
    with pytest.raises(ValueError, match="tensorflow"):
        lb.register("x", framework="tensorflow")
    assert lb._worker_env()["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_importing_layer_bench_loads_neither_framework():
    code = (
        "import sys, attnbench.layer_bench; "
        "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


class _FakeDevice:
    """A JAX device whose memory_stats() returns the given dicts in turn (bytes)."""

    platform = "gpu"

    def __init__(self, *stats):
        self.stats = list(stats)

    def memory_stats(self):
        return self.stats.pop(0)


def test_jax_device_memory_is_peak_growth_and_flags_an_early_peak():
    mib = 2**20
    memory = lb._JaxDeviceMemory(
        _FakeDevice(
            {"bytes_in_use": 100 * mib, "peak_bytes_in_use": 150 * mib},
            {"bytes_in_use": 100 * mib, "peak_bytes_in_use": 400 * mib},
        )
    )
    memory.start()
    memory.after_warmup()
    row = memory.result()
    assert (row["mem_MB"], row["mem_base_MB"], row["mem_peak_before_MB"]) == (300, 100, 50)
    assert "peak_bytes_in_use" in row["mem_method"] and "upper bound" not in row["mem_method"]

    early = lb._JaxDeviceMemory(
        _FakeDevice(
            {"bytes_in_use": 100 * mib, "peak_bytes_in_use": 900 * mib},
            {"bytes_in_use": 100 * mib, "peak_bytes_in_use": 900 * mib},
        )
    )
    early.start()
    row = early.result()
    assert row["mem_MB"] == 800 and "upper bound" in row["mem_method"]

    none = lb._JaxDeviceMemory(_FakeDevice(None, None))
    none.start()
    assert none.result()["mem_MB"] is None


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


def _blocker(tmp_path, module):
    """A plugin making ``import <module>`` fail in the worker (it runs before the build)."""
    return _plugin(
        tmp_path,
        f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {module!r}:
                    raise ImportError("blocked by the test: " + name)

        sys.meta_path.insert(0, Block())
    """,
    )


def test_jax_cuda_without_a_jax_gpu_is_an_error_row():
    pytest.importorskip("jax")
    row = lb.run_case(
        lb.Case(impl="jax-lsh", length=128, n_hashes=1, n_buckets=4, repeats=1, device="cuda"),
        timeout=120,
    )
    if row["status"] == "ok" and row["platform"] == "gpu":
        pytest.skip("JAX has a GPU here")
    assert row["status"] == "error", row
    assert "--device cuda" in row["error"] and "no GPU" in row["error"]
    assert "median_s" not in row  # nothing was measured on the CPU instead


@pytest.mark.slow
def test_real_tiny_jax_case_without_torch(tmp_path):
    pytest.importorskip("jax")
    cases = lb.expand_cases(
        ["jax-lsh"],
        [128],
        [1],
        4,
        chunk_len=32,
        repeats=2,
        warmup=1,
        threads=1,
        plugins=[_blocker(tmp_path, "torch")],
    )
    (row,) = lb.run_cases(cases, timeout=120, progress=False)
    assert row["status"] == "ok", row
    assert (row["framework"], row["platform"], row["device"]) == ("jax", "cpu", "cpu")
    assert len(row["times_s"]) == 2 and row["iqr_s"] >= 0
    assert row["compile_s"] > 0 and row["lower_s"] > 0
    assert row["xla_temp_MB"] is None or row["xla_temp_MB"] >= 0
    assert row["threads"] == 1
    assert row["mem_method"] in ("vmhwm", "ru_maxrss (not reset: may include pre-step peaks)")
    assert "torch" not in row


@pytest.mark.slow
def test_real_tiny_cases(tmp_path):
    pytest.importorskip("torch")
    cases = lb.expand_cases(
        ["lsh", "full-naive"],
        [128],
        [2],
        4,
        chunk_len=32,
        repeats=2,
        warmup=1,
        threads=1,
        plugins=[_blocker(tmp_path, "jax")],  # a torch row must not need jax
    )
    rows = lb.run_cases(cases, timeout=120, progress=False)
    assert [(r["impl"], r["status"]) for r in rows] == [("lsh", "ok"), ("full-naive", "ok")], rows
    for r in rows:
        assert len(r["times_s"]) == 2
        assert r["iqr_s"] >= 0 and r["mem_MB"] is not None
        assert r["threads"] == 1 and r["framework"] == "torch"
        assert r["mem_method"] in ("vmhwm", "ru_maxrss (not reset: may include pre-step peaks)")
