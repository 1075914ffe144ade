import os

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the package itself must import without torch
    torch = None

# Without a GPU the Triton kernels run in Triton's interpreter, which triton fixes when it is
# first imported: set it for the whole test process, before anything imports triton.
if torch is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


@pytest.fixture
def plugin(tmp_path):
    """A user's attention plugin file outside the repository (``tests.registry.PLUGIN``),
    forgotten afterwards."""
    from tests.registry import PLUGIN, USER_ATTENTIONS, forget_attentions

    path = tmp_path / "elsewhere" / "my_attention.py"
    path.parent.mkdir()
    path.write_text(PLUGIN)
    yield path
    forget_attentions(*USER_ATTENTIONS)
