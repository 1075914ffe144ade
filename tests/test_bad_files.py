"""Hostile and careless files, the second half of the bad-input sweep (issue 22): run
directories whose files are links, outputs aimed at inputs, kills and full disks during a
write, FIFOs and devices where a file belongs, names the file system or the locale cannot
take, and the silent cases. Each test fails on the code before attnbench.safeio.

Whatever is refused exits 2 with a message naming the path; nothing outside the command's
output or run directory is written, no input changes, and no file is left partly written.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.cli import main
from tests.report.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]
# No bytecode from these children: one run under a 4 KB file-size limit would leave a cut
# .pyc in a fresh checkout (Python's own pyc write takes a short write as done).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
VICTIM_TEXT = "a file outside the run: attnbench must never write it\n"


# Python ignores SIGXFSZ at start-up; this entry point restores the default, so a write past
# RLIMIT_FSIZE kills the process mid-write as a SIGKILL would (no handler, no cleanup runs).
XFSZ_KILLS = ("import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
              "from attnbench.cli import main; sys.exit(main(sys.argv[1:]))")


def attnbench(*args, timeout=300, env=None, preexec_fn=None, cwd=ROOT, xfsz_kills=False):
    entry = ["-c", XFSZ_KILLS] if xfsz_kills else ["-m", "attnbench.cli"]
    return subprocess.run([sys.executable, *entry, *map(os.fsdecode, args)],
                          cwd=cwd, env=env or ENV, capture_output=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def copy_run(tmp_path: Path, name: str = "run", source: Path = DATA / "torch-cpu") -> Path:
    run = tmp_path / name
    shutil.copytree(source, run, symlinks=True)
    return run


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def snapshot(*folders: Path) -> dict:
    """Every file below the folders, by path: its bytes (a link: where it points)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[p] = ("link", os.readlink(p)) if p.is_symlink() else \
                p.read_bytes() if p.is_file() else "dir"
    return out


# --------------------------------------------------------------------------------------------
# 1. Files in a run directory that are symbolic links
# --------------------------------------------------------------------------------------------

TINY_SUITE = ('name = "tiny"\n[[sweep]]\nvariant = "full-fused"\nframework = "torch"\n'
              'mode = "forward"\nlength = [32, 64]\nd_model = 16\nn_heads = 2\nthreads = 1\n'
              'min_repeats = 1\nmax_repeats = 1\nwarmup = 0\n')


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, Path]:
    """(suite, run directory) made by ``attnbench run``, with the L=64 case still to do."""
    folder = tmp_path_factory.mktemp("real")
    suite = folder / "tiny.toml"
    suite.write_text(TINY_SUITE)
    out = attnbench("run", suite, "--out", folder / "run", "--filter", "L=32", "--no-progress",
                    "--no-compile-cache")
    assert out.returncode == 0, out.stderr
    return suite, folder / "run"


@pytest.mark.parametrize("name", [".lock", "results.jsonl", "results.csv", "checkpoints",
                                  "meta.json"])
def test_a_resumed_run_never_writes_through_a_link_in_its_directory(tmp_path, real_run, name):
    suite, made = real_run
    run = copy_run(tmp_path, source=made)
    target = victim(tmp_path) if name != "checkpoints" else tmp_path / "elsewhere"
    if name == "checkpoints":
        target.mkdir()
    elif name in ("results.jsonl", "meta.json"):  # a link to a copy of the real file
        target.write_bytes((run / name).read_bytes())
    kept = snapshot(tmp_path / "victim.txt" if target.is_file() else target)
    (run / name).unlink(missing_ok=True) if not (run / name).is_dir() else None
    (run / name).symlink_to(target)
    out = attnbench("run", suite, "--out", run, "--no-progress", "--no-compile-cache")
    assert out.returncode == 2, out.stderr
    assert b"symbolic link" in out.stderr and name.encode() in out.stderr, out.stderr
    assert snapshot(tmp_path / "victim.txt" if target.is_file() else target) == kept


def test_a_new_run_never_writes_through_a_planted_temporary_file(tmp_path):
    """The old writer's fixed ``meta.json.tmp`` name: a link there took the run's meta."""
    run = tmp_path / "run"
    run.mkdir()
    target = victim(tmp_path)
    (run / "meta.json.tmp").symlink_to(target)
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    out = attnbench("run", suite, "--out", run, "--no-progress", "--dry-run")
    assert out.returncode == 0  # a dry run writes nothing
    assert main(["run", str(suite), "--out", str(run), "--no-progress"]) == 2
    assert target.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("name", ["index.html", "results.csv"])
def test_a_report_never_writes_through_a_link_in_the_run(tmp_path, capsys, name):
    run = copy_run(tmp_path)
    target = victim(tmp_path)
    (run / name).symlink_to(target)
    assert main(["report", str(run), "--no-attention-pattern"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and name in err, err
    assert target.read_text() == VICTIM_TEXT
    assert not (run / "index.html").is_file() or name == "index.html"


def test_the_store_appends_and_locks_only_its_own_files(tmp_path):
    from attnbench.store import StoreError
    from tests.runs import create_run

    store = create_run(tmp_path / "run")
    target = victim(tmp_path)
    store.results_path.unlink()
    store.results_path.symlink_to(target)
    row = {"run_id": "r", "case_id": "a", "case": {}, "status": "ok", "metrics": {}}
    with pytest.raises(StoreError, match="symbolic link"):
        store.append(row)
    (store.path / ".lock").symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"), store.lock():
        pass
    assert target.read_text() == VICTIM_TEXT


def test_a_checkpoint_is_never_written_through_a_linked_checkpoints_directory(tmp_path):
    import numpy as np

    from attnbench.safeio import UnsafePathError
    from attnbench.tasks.checkpoint import save_checkpoint

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        save_checkpoint(tmp_path / "checkpoints" / "x.npz", {"w": np.ones(2)}, {"loss": 1.0})
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 2. An output aimed at an input
# --------------------------------------------------------------------------------------------

OUTPUT_ON_INPUT = [
    ("export-csv-on-results", lambda a, b, t: ["export", a, "--csv", a / "results.jsonl"]),
    ("export-csv-on-meta", lambda a, b, t: ["export", a, "--csv", a / "meta.json"]),
    ("export-csv-on-lock", lambda a, b, t: ["export", a, "--csv", a / ".lock"]),
    ("export-into-another-run", lambda a, b, t: ["export", a, "--csv", b / "results.csv"]),
    ("export-csv-hard-link-to-meta", lambda a, b, t: ["export", a, "--csv", t / "hard.csv"]),
    ("compare-o-on-results", lambda a, b, t: ["compare", a, b, "-o", a / "results.jsonl"]),
    ("compare-o-on-pytest-file", lambda a, b, t: ["compare", a, t / "bench.json", "-o",
                                                  t / "bench.json"]),
    ("report-table2-on-meta", lambda a, b, t: ["report", a, "--no-attention-pattern",
                                               "--table2-markdown", a / "meta.json"]),
    ("report-table2-on-csv", lambda a, b, t: ["report", a, "--no-attention-pattern",
                                              "--table2-markdown", a / "results.csv"]),
    ("report-o-another-run", lambda a, b, t: ["report", a, "--no-attention-pattern", "-o", b]),
    ("report-o-a-pytest-file", lambda a, b, t: ["report", t / "bench.json", "-o",
                                                t / "bench.json"]),
]


@pytest.mark.parametrize("argv", [a for _, a in OUTPUT_ON_INPUT],
                         ids=[i for i, _ in OUTPUT_ON_INPUT])
def test_an_output_never_replaces_an_input(tmp_path, capsys, argv):
    a, b = copy_run(tmp_path, "a"), copy_run(tmp_path, "b", DATA / "jax-cpu")
    (a / ".lock").write_text("")
    shutil.copy(DATA / "pytest_benchmark.json", tmp_path / "bench.json")
    os.link(a / "meta.json", tmp_path / "hard.csv")
    before = snapshot(tmp_path)
    assert main([str(x) for x in argv(a, b, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(tmp_path) in err, err
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# 3. Writes are atomic: a kill or a full disk mid-write leaves the previous file
# --------------------------------------------------------------------------------------------


def _file_size_limit(limit: int):
    """A child whose writes stop at ``limit`` bytes per file: killed there (SIGXFSZ, see
    :data:`XFSZ_KILLS`), or refused there (EFBIG, as a full disk)."""
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.parametrize("kill", [True, False], ids=["killed", "disk-full"])
@pytest.mark.parametrize("command", ["export", "report"])
def test_a_write_cut_short_leaves_the_previous_file_whole(tmp_path, command, kill):
    run = copy_run(tmp_path)
    assert main(["export", str(run), "--csv", str(run / "results.csv")]) == 0
    (run / "index.html").write_text("<html>the previous report</html>\n")
    before = snapshot(run)
    argv = (["export", run, "--csv", run / "results.csv"] if command == "export" else
            ["report", run, "--no-attention-pattern"])
    out = attnbench(*argv, preexec_fn=_file_size_limit(4096), xfsz_kills=kill)
    if kill:
        assert out.returncode == -signal.SIGXFSZ, out.stderr
    else:
        assert out.returncode == 2, out.stderr
        assert b"File too large" in out.stderr and b"Traceback" not in out.stderr, out.stderr
    after = snapshot(run)
    leftovers = [p for p in after if p not in before]
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers), leftovers
    assert {p: v for p, v in after.items() if p in before} == before


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_a_clear_error_and_loses_nothing(small_disk, tmp_path):
    """Every writer on a full tmpfs: exit 2 naming the disk, no traceback, the files there
    unchanged (the end-of-run CSV included: the rows are fsynced before it)."""
    run = copy_run(small_disk)
    assert main(["export", str(run), "--csv", str(run / "results.csv")]) == 0
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    _fill(small_disk)
    before = snapshot(small_disk)
    commands = [["export", run, "--csv", run / "results.csv"],
                ["report", run, "--no-attention-pattern"],
                ["compare", run, run, "-o", small_disk / "cmp.md"],
                ["report", run, "--no-attention-pattern", "-o", small_disk / "r"]]
    for argv in commands:
        out = attnbench(*argv)
        assert out.returncode == 2, (argv, out.stderr)
        assert b"No space left on device" in out.stderr and b"Traceback" not in out.stderr, \
            (argv, out.stderr)
    after = snapshot(small_disk)
    assert {p: v for p, v in after.items() if p in before} == before


def test_a_run_whose_csv_cannot_be_written_at_the_end_says_so(tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    monkeypatch.setattr("attnbench.runs.write_results_csv", full)
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--filter", "L=32",
                 "--no-progress", "--no-compile-cache"]) == 2
    err = capsys.readouterr().err
    assert "results.csv could not be written (No space left on device)" in err, err
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# 5. FIFOs, devices and sizes: nothing hangs, nothing reads without bound
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["results.jsonl", "meta.json", "suite", "pytest-benchmark"])
def test_a_fifo_where_a_file_belongs_is_refused_without_blocking(tmp_path, where):
    run = copy_run(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    if where in ("results.jsonl", "meta.json"):
        (run / where).unlink()
        os.mkfifo(run / where)
        commands = [["report", run, "-o", tmp_path / "r"], ["export", run, "--csv",
                    tmp_path / "x.csv"], ["compare", run, run], ["check", run]]
    elif where == "suite":
        commands = [["run", fifo, "--dry-run"]]
    else:
        commands = [["compare", fifo, run], ["report", fifo, "-o", tmp_path / "r"]]
    for argv in commands:
        out = attnbench(*argv, timeout=60)  # the old readers blocked here for ever
        assert out.returncode == 2, (argv, out.stderr)
        assert b"FIFO" in out.stderr and b"Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("argv", [["run", "/dev/zero", "--dry-run"],
                                  ["compare", "/dev/zero", "/dev/zero"],
                                  ["report", "/dev/zero"]])
def test_a_device_is_not_read(capsys, argv):
    assert main(argv) == 2
    assert "character device" in capsys.readouterr().err


def test_a_huge_row_or_suite_is_refused_by_size(tmp_path, capsys):
    from attnbench.store import ROW_LIMIT

    run = copy_run(tmp_path)
    with open(run / "results.jsonl", "a") as f:
        f.write('{"pad": "' + "x" * (ROW_LIMIT + 10) + '"}\n')
    assert main(["export", str(run), "--csv", str(tmp_path / "x.csv")]) == 0
    assert "a row longer than" in capsys.readouterr().err
    suite = tmp_path / "huge.toml"
    suite.write_text('name = "huge"\n' + "# padding\n" * 500_000)
    assert main(["run", str(suite), "--dry-run"]) == 2
    assert "MiB a suite may be" in capsys.readouterr().err


def test_readers_keep_one_row_per_case_while_reading(tmp_path):
    """A store where one case was written 2,000 times: the reader holds one row for it."""
    from attnbench.runs import load_source

    run = copy_run(tmp_path)
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    with open(run / "results.jsonl", "a") as f:
        f.writelines(lines[:1] * 2000)
    import tracemalloc

    tracemalloc.start()
    source = load_source(run)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(source.rows) == len(lines)
    assert source.rows[-1] == json.loads(lines[0])  # the last written, in file order
    kept = (DATA / "torch-cpu" / "results.jsonl").stat().st_size
    assert peak < 20 * kept, (peak, kept, (run / "results.jsonl").stat().st_size)


# --------------------------------------------------------------------------------------------
# 6. Names the file system or the locale cannot take
# --------------------------------------------------------------------------------------------

LONG = "x" * 300


@pytest.mark.parametrize("argv", [
    ["run", f"{LONG}.toml", "--dry-run"], ["run", "smoke", "--out", LONG],
    ["report", LONG], ["report", "RUN", "-o", LONG], ["export", LONG, "--csv", "x.csv"],
    ["export", "RUN", "--csv", LONG], ["compare", LONG, "RUN"], ["compare", "RUN", "RUN", "-o",
                                                                 LONG],
    ["check", LONG], ["run", "smoke", "--compile-cache", LONG, "--out", "out"],
    ["kernels", "--out", LONG]], ids=lambda a: " ".join(a)[:40])
def test_a_name_too_long_is_an_error_naming_it(tmp_path, argv):
    run = copy_run(tmp_path)
    argv = [str(run) if a == "RUN" else str(tmp_path / a) if a == LONG else a for a in argv]
    out = attnbench(*argv, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert b"Traceback" not in out.stderr and b"error" in out.stderr, out.stderr


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_a_run_directory_whose_name_is_not_utf8(tmp_path, locale):
    run = Path(os.fsdecode(os.fsencode(tmp_path) + b"/run-\xff"))
    shutil.copytree(DATA / "torch-cpu", run)
    env = {**ENV, "LC_ALL": locale, "LANG": locale, "PYTHONUTF8": "0"}
    for argv in (["report", run, "--no-attention-pattern"], ["export", run, "--csv",
                 run / "results.csv"], ["check", run, "--allow-no-contracts"],
                 ["compare", run, run]):
        out = attnbench(*argv, env=env)
        assert out.returncode in (0, 1), (argv, out.stderr)
        assert b"Traceback" not in out.stderr, out.stderr
    (run / "index.html").read_bytes().decode("utf-8")  # still valid UTF-8


def test_results_csv_that_is_a_directory(tmp_path, capsys):
    run = copy_run(tmp_path)
    (run / "results.csv").mkdir()
    assert main(["report", str(run), "--no-attention-pattern"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["export", str(run), "--csv", str(run / "results.csv")]) == 2
    assert "is a directory" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 4 (the schema's part) and 7: metrics that are not numbers, and the silent cases
# --------------------------------------------------------------------------------------------

BAD_METRICS = [("time_median_s", float("nan")), ("time_median_s", float("inf")),
               ("time_median_s", -0.5), ("mem_peak_mb", -3.0), ("mem_peak_mb", "12 MB"),
               ("time_samples_s", [0.1, float("nan")]), ("approx_recall", float("inf"))]


@pytest.mark.parametrize("name, value", BAD_METRICS, ids=[f"{n}={v}" for n, v in BAD_METRICS])
def test_a_metric_that_is_not_a_number_of_its_kind_is_an_unreadable_row(tmp_path, capsys,
                                                                         name, value):
    run = copy_run(tmp_path)
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["metrics"][name] = value
    lines[0] = json.dumps(row) + "\n"  # json writes NaN and Infinity unless told not to
    (run / "results.jsonl").write_text("".join(lines))
    assert main(["compare", str(run), str(DATA / "torch-cpu")]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl:1" in err and name in err, err
    assert main(["export", str(run), "--csv", str(tmp_path / "x.csv")]) == 0
    assert "results.jsonl:1" in capsys.readouterr().err
    assert "Infinity" not in (tmp_path / "x.csv").read_text()


@pytest.mark.parametrize("edit", ["length", "case_id", "splice"])
def test_a_row_whose_id_is_not_its_cases_is_unreadable(tmp_path, capsys, edit):
    """compare, check and the history pair rows by case_id: a row naming another case's id
    (an edited field, an edited id, a row spliced in under another's id) must not stand for
    it, nor hide the case it replaces."""
    run = copy_run(tmp_path)
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    row, other = json.loads(lines[0]), json.loads(lines[1])
    if edit == "length":
        row["case"]["length"] *= 2
    elif edit == "case_id":
        row["case_id"] = "0123456789ab"
    else:
        row["case_id"] = other["case_id"]
    lines[0] = json.dumps(row) + "\n"
    (run / "results.jsonl").write_text("".join(lines))
    assert main(["compare", str(run), str(DATA / "torch-cpu")]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl:1" in err and "is not its case's" in err, err
    assert main(["check", str(run)]) == 2


def test_a_pytest_benchmark_file_with_a_text_metric_is_read_without_a_traceback(tmp_path,
                                                                                  capsys):
    data = json.loads((DATA / "pytest_benchmark.json").read_text())
    data["benchmarks"][0].setdefault("extra_info", {})["mem_peak_mb"] = "lots"
    data["benchmarks"][1].setdefault("extra_info", {})['=HYPERLINK("http://x","y")'] = 1
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    assert main(["compare", str(path), str(path)]) == 2
    assert "mem_peak_mb must be a number" in capsys.readouterr().err
    assert main(["report", str(path), "-o", str(tmp_path / "r"), "--no-attention-pattern"]) == 0
    header = (tmp_path / "r" / "results.csv").read_text().splitlines()[0]
    assert "'=HYPERLINK" in header and ',"=HYPERLINK' not in header, header


def test_a_worker_that_measures_nan_gives_an_error_row_and_the_sweep_goes_on(tmp_path):
    from attnbench.runner.run import Outcome, run_cases
    from attnbench.runner.suite import load_suite
    from tests.runs import create_run

    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    cases = load_suite(suite).cases
    store = create_run(tmp_path / "run")

    def runner(case, run_dir):
        value = float("nan") if case.length == 32 else 0.25
        return Outcome("ok", None, {"time_median_s": value, "approx_recall": 0.5}, 1.0)

    counts = run_cases(cases, store, "r", progress=False, runner=runner)
    assert counts == {"error": 1, "ok": 1}
    rows = {r["case"]["length"]: r for r in store.rows()}
    assert "time_median_s = nan: must be finite" in rows[32]["error"]
    assert rows[32]["metrics"] == {"approx_recall": 0.5}
    assert rows[64]["metrics"]["time_median_s"] == 0.25


def test_a_report_of_one_run_twice_or_of_no_node_is_refused(tmp_path, capsys):
    run = copy_run(tmp_path)
    assert main(["report", str(run), str(run), "-o", str(tmp_path / "r")]) == 2
    assert "the same run" in capsys.readouterr().err
    copy = copy_run(tmp_path, "copy")
    assert main(["report", str(run), str(copy), "-o", str(tmp_path / "r")]) == 2
    assert "run id" in capsys.readouterr().err
    assert main(["report", str(run), "--node", "no-such-host", "-o", str(tmp_path / "r")]) == 2
    assert "--node no-such-host: no case was measured on it" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_unwritable_compile_cache_is_said_not_recorded_as_a_miss(tmp_path, monkeypatch):
    from attnbench.runner import compile_cache
    from attnbench.runner.case import Case

    cache = tmp_path / "cache"
    (cache / "jax").mkdir(parents=True)
    monkeypatch.setattr("attnbench.safeio.cannot_create_in", lambda d: "Read-only file system")
    monkeypatch.setenv(compile_cache.ENV, str(cache))
    case = Case(variant="lsh", framework="jax", mode="forward", length=64, chunk_len=32)
    result = compile_cache.configure(case).result()
    assert result["compile_cache"] == "unwritable"
    assert "Read-only file system" in result["compile_cache_error"]


def test_two_plugins_with_one_file_name_both_load(tmp_path):
    from attnbench.variants import VARIANTS, load_plugin

    for folder, name in (("a", "plugin-a-x"), ("b", "plugin-b-x")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plugin.py").write_text(
            "from attnbench.variants import Variant, register_variant\n"
            f"register_variant(Variant(name={name!r}, summary='s', kind='layer', "
            "attention='full', frameworks=('torch',), build=lambda case: None))\n")
        load_plugin(str(tmp_path / folder / "plugin.py"))
    try:
        assert "plugin-a-x" in VARIANTS and "plugin-b-x" in VARIANTS
    finally:
        VARIANTS.pop("plugin-a-x", None)
        VARIANTS.pop("plugin-b-x", None)


# --------------------------------------------------------------------------------------------
# The second probe (issue 22, "probe again"): hard links, outputs deeper inside other runs,
# secrets, Markdown, decoding limits, types, plugins, shadowing metrics, stale contracts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".lock", "results.jsonl"])
def test_a_hard_linked_run_file_is_refused_before_anything_runs(tmp_path, real_run, name):
    suite, made = real_run
    run = copy_run(tmp_path, source=made)
    target = victim(tmp_path)
    (run / name).unlink(missing_ok=True)
    os.link(target, run / name)
    out = attnbench("run", suite, "--out", run, "--no-progress", "--no-compile-cache")
    assert out.returncode == 2 and b"hard links" in out.stderr, out.stderr
    assert target.read_text() == VICTIM_TEXT


def test_outputs_deeper_inside_another_run_or_on_its_derived_files_are_refused(tmp_path,
                                                                              capsys):
    a, other = copy_run(tmp_path, "a"), copy_run(tmp_path, "other", DATA / "jax-cpu")
    (other / "sub").mkdir()
    before = snapshot(tmp_path)
    for argv in (["report", a, "-o", other / "sub" / "deeper"],
                 ["report", a, "-o", a / "sub"],
                 ["export", a, "--csv", other / "sub" / "x.csv"],
                 ["compare", a, a, "-o", a / "results.csv"],
                 ["export", a, "--csv", a / "index.html"],
                 ["export", a, "--csv", "."], ["compare", a, a, "-o", ""]):
        assert main([str(x) for x in argv]) == 2, argv
        assert "error" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert main(["run", "smoke", "--out", str(other / "checkpoints"), "--no-progress"]) == 2
    assert "another run's directory" in capsys.readouterr().err


def test_credentials_are_never_recorded():
    from attnbench.measure.environment import recorded_env_vars

    kept = recorded_env_vars({"TF_TOKEN_app_terraform_io": "t", "TF_VAR_db_password": "p",
                              "CUDA_API_KEY": "k", "TORCH_SECRET": "s",
                              "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "2",
                              "HOME": "/root"})
    assert kept == {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "2"}


def test_table2_markdown_writes_a_hostile_run_as_text(tmp_path):
    run = copy_run(tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    meta["run_id"] = "g`<img src=x onerror=alert(1)>`"
    meta["argv"] = ["attnbench", "run", "x\n```\n<script>alert(2)</script>"]
    (run / "meta.json").write_text(json.dumps(meta))
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for row in rows:
        if row["case"]["mode"] == "task":
            row["metrics"]["task_eval"]["<iframe src=x>|x"] = 0.5
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run), "-o", str(tmp_path / "r"), "--no-attention-pattern",
                 "--table2-markdown", str(tmp_path / "t2.md")]) == 0
    text = (tmp_path / "t2.md").read_text()
    # a code span shows its text as written (never HTML): the run id and command stay inside
    # spans they cannot close; a task name in a table cell is escaped
    assert "run `` g`<img src=x onerror=alert(1)>` ``:" in text
    assert "```` attnbench run x ``` <script>alert(2)</script> ````" in text
    assert "<iframe" not in text and "&lt;iframe src=x&gt;\\|x" in text


DEEP = "[" * 100_000 + "]" * 100_000
BAD_ROWS = [
    ("deep-json", lambda row: '{"a": ' + DEEP + "}"),
    ("huge-int", lambda row: json.dumps(row).replace('"seed": 0', '"seed": ' + "9" * 5000)),
    ("int-beyond-float", lambda row: json.dumps({**row, "metrics": {
        **row["metrics"], "time_median_s": 10 ** 400}})),
    ("case-variant-object", lambda row: json.dumps({**row, "case": {**row["case"],
                                                                   "variant": {"a": 1}}})),
    ("case-length-text", lambda row: json.dumps({**row, "case": {**row["case"],
                                                                "length": "x"}})),
    ("unstable-text", lambda row: json.dumps({**row, "metrics": {**row["metrics"],
                                                                "unstable": "false"}})),
    ("accuracy-beyond-one", lambda row: json.dumps({**row, "metrics": {
        **row["metrics"], "task_accuracy": 1e308}})),
    ("wall-negative", lambda row: json.dumps({**row, "wall_s": -5})),
]


@pytest.mark.parametrize("make", [m for _, m in BAD_ROWS], ids=[i for i, _ in BAD_ROWS])
def test_a_row_no_measurement_makes_is_one_unreadable_row_never_a_traceback(tmp_path, capsys,
                                                                            make):
    run = copy_run(tmp_path)
    lines = (run / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["case"]["seed"] == 0
    (run / "results.jsonl").write_text("\n".join([make(first), *lines[1:]]) + "\n")
    assert main(["compare", str(run), str(DATA / "torch-cpu")]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl:1" in err and "1 row(s) could not be read" in err, err
    assert main(["export", str(run), "--csv", str(tmp_path / "x.csv")]) == 0


def test_broken_meta_pytest_files_and_suites_are_errors_not_tracebacks(tmp_path, capsys):
    def meta_with(change):
        run = copy_run(tmp_path, f"m{len(list(tmp_path.iterdir()))}")
        meta = json.loads((run / "meta.json").read_text())
        change(meta)
        (run / "meta.json").write_text(json.dumps(meta))
        return run

    broken = [meta_with(lambda m: m["environment"]["git"].update(sha=12345)),
              meta_with(lambda m: m["environment"].update(packages=["torch"])),
              meta_with(lambda m: m["environment"].update(memory_total_mb=float("nan")))]
    deep = copy_run(tmp_path, "deep")
    (deep / "meta.json").write_text('{"x": ' + DEEP + "}")
    broken.append(deep)
    for run in broken:
        assert main(["report", str(run), "-o", str(tmp_path / "r")]) == 2
        assert str(run) in capsys.readouterr().err
    bench = json.loads((DATA / "pytest_benchmark.json").read_text())
    for change in (lambda b: b.update(machine_info="box"),
                   lambda b: b.update(commit_info="abc")):
        data = json.loads(json.dumps(bench))
        change(data)
        (tmp_path / "b.json").write_text(json.dumps(data))
        assert main(["compare", str(tmp_path / "b.json"), str(DATA / "pytest_benchmark.json")
                     ]) == 2
        assert "must be an object" in capsys.readouterr().err
    data = json.loads(json.dumps(bench))
    data["benchmarks"][0]["stats"] = [1]  # that benchmark has no stats: no time, no traceback
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert main(["export", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv")]) == 0
    deep_suite = tmp_path / "deep.toml"
    deep_suite.write_text('name = "t"\nx = ' + "{a = " * 400 + "1" + "}" * 400 + "\n")
    assert main(["run", str(deep_suite), "--dry-run"]) == 2
    assert "nested too deeply" in capsys.readouterr().err


@pytest.mark.parametrize("body", ["raise KeyboardInterrupt\n",
                                  "class E(BaseException):\n    pass\nraise E('boom')\n"])
def test_a_plugin_raising_a_base_exception_is_a_suite_error(tmp_path, capsys, body):
    (tmp_path / "p.py").write_text(body)
    suite = tmp_path / "s.toml"
    suite.write_text('plugins = ["p.py"]\n' + TINY_SUITE)
    assert main(["run", str(suite), "--dry-run"]) == 2
    assert "while loading" in capsys.readouterr().err


def test_a_metric_named_like_a_field_never_replaces_it(tmp_path):
    run = copy_run(tmp_path)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    oom = next(r for r in rows if r["status"] == "oom")
    oom["metrics"].update(status="ok", variant="lsh", run_id="someone-else")
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["export", str(run), "--csv", str(tmp_path / "x.csv")]) == 0
    import csv

    with open(tmp_path / "x.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["case_id"] == oom["case_id"])
    assert (row["status"], row["variant"], row["run_id"]) == (
        "oom", oom["case"]["variant"], oom["run_id"])
    assert row["metric_status"] == "ok"


def test_a_resume_with_other_contracts_is_refused(tmp_path, real_run):
    suite, made = real_run
    run = copy_run(tmp_path, source=made)
    tightened = tmp_path / "tight.toml"
    tightened.write_text(suite.read_text() + '[[contract]]\nname = "c"\nmax_ratio = 1\n'
                         'metric = "time_median_s"\n'
                         'numerator = {length = 32}\ndenominator = {length = 64}\n')
    out = attnbench("run", tightened, "--out", run, "--no-progress", "--no-compile-cache")
    assert out.returncode == 2 and b"other contracts" in out.stderr, out.stderr


def test_blank_lines_are_not_unreadable_rows_and_check_prints_plain_text(tmp_path, capsys):
    run = copy_run(tmp_path)
    with open(run / "results.jsonl", "a") as f:
        f.write("\n   \n")
    meta = json.loads((run / "meta.json").read_text())
    meta["run_id"] = "x\x1b]0;PWNED\x07\x1b[2Jy"
    (run / "meta.json").write_text(json.dumps(meta))
    main(["check", str(run), "--allow-no-contracts"])
    captured = capsys.readouterr()
    assert "could not be read" not in captured.err
    assert "\x1b" not in captured.out and "\x07" not in captured.out
