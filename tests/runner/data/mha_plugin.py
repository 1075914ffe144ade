"""A test plugin: torch's MultiheadAttention registered as a layer variant."""

from attnbench.variants import Variant, register_variant


def build(case, *, device, dtype):
    import torch

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(case.d_model, case.n_heads, batch_first=True,
                                                   device=device, dtype=dtype)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    return SelfAttention()


register_variant(Variant("torch-mha", "torch.nn.MultiheadAttention (test plugin)", "layer",
                         "full", frameworks=("torch",), build=build))
