import jax
import pytest

# float64 for the reference comparisons; every implementation names its float32 dtypes.
jax.config.update("jax_enable_x64", True)


def _platforms():
    platforms = ["cpu"]
    try:
        if jax.devices("gpu"):
            platforms.append("cuda")
    except RuntimeError:
        pass
    return platforms


@pytest.fixture(params=_platforms())
def jax_device(request):
    """Every JAX test runs on the CPU, and on the GPU too when JAX has one (id "cuda")."""
    device = jax.devices("cpu" if request.param == "cpu" else "gpu")[0]
    with jax.default_device(device):
        yield device
