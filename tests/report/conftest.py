from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GOLDEN_INPUTS = ["torch-cpu", "jax-cpu", "evil", "empty", "pytest_benchmark.json"]


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def golden_report(tmp_path_factory) -> Path:
    """The report of every golden run together, built once (it takes seconds)."""
    pytest.importorskip("seaborn", reason="the report needs the 'report' extra")
    from attnbench.report.command import build_report

    out = tmp_path_factory.mktemp("golden-report")
    return build_report([DATA / name for name in GOLDEN_INPUTS], out)
