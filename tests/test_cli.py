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
