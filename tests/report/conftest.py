import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GOLDEN_INPUTS = ["torch-cpu", "jax-cpu", "evil", "empty", "pytest_benchmark.json"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_report_extra() -> None:
    """Skip without pandas + seaborn (the 'report' extra), except in CI, where it fails."""
    try:
        import pandas  # noqa: F401
        import seaborn  # noqa: F401
    except ImportError as exc:
        message = f"the report needs the 'report' extra ({exc.name} is missing)"
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def golden_report(tmp_path_factory) -> Path:
    """The report of every golden run together, built once (it takes seconds)."""
    require_report_extra()
    from attnbench.report.command import build_report

    out = tmp_path_factory.mktemp("golden-report")
    return build_report([DATA / name for name in GOLDEN_INPUTS], out)
