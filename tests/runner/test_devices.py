"""Both frameworks resolve devices alike: a bad name or a missing GPU is an error, never a
CPU run in disguise."""

from __future__ import annotations

import importlib

import pytest

FRAMEWORKS = ["torch", "jax"]


def resolve(framework):
    return importlib.import_module(f"attnbench.{framework}_impl.common").resolve_device


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", ["tpu", "cuda:x", "cpu:1", ""])
def test_bad_names(framework, name):
    with pytest.raises(ValueError, match="must be cpu, cuda or cuda:N"):
        resolve(framework)(name)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cpu_and_missing_gpu(framework):
    device = resolve(framework)("cpu")
    assert getattr(device, "platform", getattr(device, "type", None)) == "cpu"
    try:
        resolve(framework)("cuda:999")
    except RuntimeError as exc:
        assert "cuda:999" in str(exc) and ("CPU instead" in str(exc) or "GPU(s)" in str(exc))
    else:
        pytest.fail("cuda:999 resolved on a machine with fewer than 1000 GPUs")


def test_torch_refuses_a_cuda_index_it_does_not_have(monkeypatch):
    """As JAX's resolver does: cuda:N beyond the device count is an error, not a later crash."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve("torch")("cuda:0") == torch.device("cuda:0")
    with pytest.raises(RuntimeError, match=r"device='cuda:1' asked but torch sees 1 GPU\(s\)"):
        resolve("torch")("cuda:1")
