import subprocess
import sys


def test_import_attnbench_loads_neither_torch_nor_jax():
    code = ("import sys, attnbench, attnbench.spec, attnbench.reference; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
