import importlib.util
import subprocess
import sys

import pytest

from attnbench import __version__
from attnbench.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == __version__


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "report", "compare", "check", "list", "env",
                                     "export"])
def test_help_of_every_command_loads_neither_framework(command):
    code = ("import sys; from attnbench.cli import main\n"
            f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'jax' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().endswith("False False False"), out.stdout + out.stderr
    assert "usage: attnbench " + command in out.stdout


def _not_runs(tmp_path):
    """Paths that are not runs, each as a user might pass one."""
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    stray = tmp_path / "stray-dir"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a run")
    text = tmp_path / "notes.json"
    text.write_text('{"a": 1}')
    return {"missing": tmp_path / "missing", "empty directory": empty,
            "directory of other files": stray, "other JSON": text}


@pytest.mark.parametrize("command", ["export", "report", "compare", "check"])
def test_every_command_refuses_a_path_that_is_not_a_run(command, tmp_path, capsys):
    """exit 2 and a message naming the path; export writes no CSV."""
    for what, path in _not_runs(tmp_path).items():
        argv = {"export": ["export", str(path), "--csv", str(tmp_path / "out.csv")],
                "report": ["report", str(path), "-o", str(tmp_path / "report")],
                "compare": ["compare", str(path), str(path)],
                "check": ["check", str(path)]}[command]
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert str(path) in err and "error" in err, (what, err)
        assert not (tmp_path / "out.csv").exists(), what


def test_every_reader_says_which_rows_it_could_not_read(tmp_path, capsys):
    """report and export say how many and where; compare and check refuse to judge."""
    from attnbench.runner.case import Case
    from tests.runs import create_run

    store = create_run(tmp_path / "run", contracts=[{
        "name": "c", "metric": "time_median_s", "numerator": {"length": 64},
        "denominator": {"length": 128}, "max_ratio": 10.0}])
    for length in (64, 128):
        case = Case(variant="full-fused", framework="torch", mode="forward", length=length)
        store.append({"run_id": "run", "case_id": case.case_id, "case": case.to_dict(),
                      "status": "ok", "error": None, "started_at": None, "wall_s": 1.0,
                      "metrics": {"time_median_s": 0.001 * length}})
        if length == 64:
            with open(store.results_path, "a") as f:
                f.write('{"garbled": \n')
    run = str(tmp_path / "run")
    where = f"{store.results_path}:2"
    assert main(["export", run, "--csv", str(tmp_path / "out.csv")]) == 0
    err = capsys.readouterr().err
    assert "1 row(s) could not be read" in err and where in err
    assert (tmp_path / "out.csv").read_text().count("\n") == 3
    assert main(["check", run]) == 2
    assert where in capsys.readouterr().err
    assert main(["compare", run, run]) == 2
    assert where in capsys.readouterr().err
    pytest.importorskip("seaborn")
    assert main(["report", run, "-o", str(tmp_path / "report"),
                 "--no-attention-pattern"]) == 0
    assert where in capsys.readouterr().err
    assert where in (tmp_path / "report" / "index.html").read_text()


def test_output_paths_that_cannot_be_written_are_clear_errors(tmp_path, capsys):
    from tests.report.conftest import DATA

    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    run = str(DATA / "torch-cpu")
    cases = [
        (["export", run, "--csv", str(a_dir)], str(a_dir)),
        (["export", run, "--csv", "/proc/attnbench.csv"], "/proc/attnbench.csv"),
        (["compare", run, run, "-o", "/proc/attnbench.txt"], "/proc/attnbench.txt"),
        (["run", "smoke", "--out", "/proc/attnbench-run"], "/proc/attnbench-run"),
    ]
    if importlib.util.find_spec("seaborn"):
        cases.append((["report", run, "-o", str(a_file)], str(a_file)))
        cases.append((["report", run, "-o", "/proc/attnbench-report"], "/proc/attnbench-report"))
    for argv, path in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert path in err and "error" in err and "Traceback" not in err, (argv, err)
    assert a_file.read_text() == "keep"
