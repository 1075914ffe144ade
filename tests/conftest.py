import numpy as np
import pytest

try:
    import torch
except ImportError:  # the package itself must import without torch
    torch = None


def _devices():
    devices = ["cpu"]
    if torch is not None and torch.cuda.is_available():
        devices.append("cuda")
    return devices


@pytest.fixture(params=_devices())
def device(request):
    """Every torch test runs on the CPU, and on CUDA too when a GPU is present."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
