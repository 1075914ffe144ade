"""What the harness times in PyTorch: one step of a variant at one case.

``make_step(case, variant)`` builds the layer or model and its inputs (untimed) and returns a
:class:`Step`: a zero-argument ``run`` that does one step and synchronises the device before
returning, the memory meter for this device, and facts about where it ran. The step of each
mode:

- ``forward``: one forward pass under ``torch.no_grad()`` (inference);
- ``forward-backward``: layers, the gradient of the output's sum with respect to the input
  and the weights; models, the gradient of the next-token cross-entropy;
- ``train-step``: forward, backward and ``torch.optim.Adam.step()``.

Gradients are set to None before each step, as ``zero_grad(set_to_none=True)`` does, so every
step allocates what a training loop would. Mirrors :mod:`attnbench.jax_impl.bench`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attnbench.measure.memory import CpuMemory, TorchCudaMemory
from attnbench.torch_impl.common import resolve_device
from attnbench.torch_impl.full_attention import fused_kernel
from attnbench.torch_impl.model import LanguageModel, make_attention
from attnbench.variants import Variant, attention_kind, attention_spec, model_spec

LEARNING_RATE = 1e-4


@dataclass
class Step:
    run: Callable[[], None]
    memory: object
    info: dict = field(default_factory=dict)


def language_model_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t + 1."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1))


def make_step(case, variant: Variant) -> Step:
    if case.threads:
        torch.set_num_threads(case.threads)
    device = resolve_device(case.device)
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(case.seed)
    data = torch.Generator().manual_seed(case.seed)
    if variant.kind == "layer":
        if variant.build is not None:  # another library's layer, from a plugin
            module = variant.build(case, device=device, dtype=dtype)
        else:
            module = make_attention(case.d_model, attention_spec(variant, case), device=device,
                                    dtype=dtype)
        x = torch.randn(case.batch, case.length, case.d_model, generator=data)
        inputs = x.to(device=device, dtype=dtype)

        def objective():
            return module(inputs).float().sum()
    else:
        module = LanguageModel(model_spec(variant, case), device=device, dtype=dtype)
        inputs = torch.randint(0, case.vocab_size, (case.batch, case.length),
                               generator=data).to(device)

        def objective():
            return language_model_loss(module(inputs), inputs)

    params = list(module.parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if case.mode == "forward":
        module.eval()

        def run() -> None:
            with torch.no_grad():
                objective()
            sync()
    elif case.mode in ("forward-backward", "train-step"):
        module.train()
        if variant.kind == "layer":
            inputs.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=LEARNING_RATE) \
            if case.mode == "train-step" else None

        def run() -> None:
            inputs.grad = None
            for p in params:
                p.grad = None
            objective().backward()
            if optimizer is not None:
                optimizer.step()
            sync()
    else:
        raise ValueError(f"mode={case.mode!r}: not a timed mode")

    memory = TorchCudaMemory(torch, device) if device.type == "cuda" else CpuMemory()
    kind = attention_kind(variant, case)
    hashed = kind == "lsh"
    info = {
        "platform": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads_used": torch.get_num_threads(),
        "framework_version": torch.__version__,
        "n_params": sum(p.numel() for p in params),
        "kernel": case.resolved_kernel if hashed else None,  # the LSH kernel that ran
        "kernel_precision": kernel_precision(case) if hashed else None,
        "full_attention_kernel": (fused_kernel(dtype, device.type)
                                  if kind == "full" and variant.impl == "fused"
                                  else None),
        # GPU repeats run back to back: the L2 cache is warm (not flushed between calls)
        "l2_cache": "warm" if device.type != "cpu" else None,
    }
    return Step(run, memory, info)


def kernel_precision(case) -> str:
    """How the LSH band's products are computed: the fused kernel's route (3xTF32 for float32)
    or, on the portable core, the dtype's own matmuls (float32 without TF32: torch's default,
    recorded in the environment as ``tf32_matmul``)."""
    if case.resolved_kernel == "triton":
        from attnbench.torch_impl import lsh_triton

        return lsh_triton.precision(case.dtype)
    return case.dtype
