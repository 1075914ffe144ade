import subprocess
import sys

import attnbench


def test_import_attnbench_loads_neither_torch_nor_jax():
    code = ("import sys, attnbench, attnbench.spec, attnbench.reference; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_report_compare_and_check_sit_on_the_run_model_and_not_on_each_other():
    """report/, compare.py and contracts.py import attnbench.runs (and below), never another
    of the three: the run model sits under them all."""
    import ast
    from pathlib import Path

    package = Path(attnbench.__file__).parent
    groups = {"report": sorted((package / "report").glob("*.py")),
              "compare": [package / "compare.py"], "contracts": [package / "contracts.py"]}
    for group, files in groups.items():
        others = {f"attnbench.{g}" for g in groups if g != group}
        for path in files:
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    hit = {o for o in others if name == o or name.startswith(o + ".")}
                    assert not hit, f"{path.name} imports {name}"
