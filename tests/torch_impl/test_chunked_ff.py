import numpy as np
import pytest
import torch

from attnbench import reference as R
from attnbench.spec import FeedForwardSpec
from attnbench.torch_impl.chunked_ff import FeedForward
from tests.tolerances import assert_close
from tests.torch_impl.helpers import ff_params_numpy

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_len", [None, 16, 24], ids=["whole", "c16", "c24-ragged"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_feed_forward_matches_reference(rng, device, dtype, chunk_len, activation):
    torch.manual_seed(0)
    ff = FeedForward(12, FeedForwardSpec(d_ff=48, activation=activation, chunk_len=chunk_len),
                     device=device, dtype=DTYPES[dtype])
    x = torch.tensor(rng.standard_normal((2, 64, 12)), dtype=DTYPES[dtype], device=device,
                     requires_grad=True)
    y = ff(x)
    d_y = torch.tensor(rng.standard_normal(y.shape), dtype=y.dtype, device=device)
    y.backward(d_y)
    params = ff_params_numpy(ff)
    x64 = x.detach().cpu().double().numpy()
    assert_close(y.detach().cpu().numpy(), R.feed_forward(x64, params, activation=activation),
                 dtype, "output")
    d_x, d_params = R.feed_forward_vjp(x64, params, d_y.cpu().double().numpy(),
                                       activation=activation)
    assert_close(x.grad.cpu().numpy(), d_x, dtype, "d_x")
    torch_grads = {"ln_gamma": ff.norm.weight.grad, "ln_beta": ff.norm.bias.grad,
                   "w1": ff.w1.weight.grad.T, "b1": ff.w1.bias.grad,
                   "w2": ff.w2.weight.grad.T, "b2": ff.w2.bias.grad}
    for name, grad in torch_grads.items():
        assert_close(grad.cpu().numpy(), d_params[name], dtype, f"d_{name}")


def test_backward_runs_chunk_by_chunk():
    """The hidden layer is only ever evaluated on chunk_len positions, backward included."""
    ff = FeedForward(16, FeedForwardSpec(d_ff=64, chunk_len=32))
    seen = []
    ff.w1.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[1]))
    x = torch.randn(1, 256, 16, requires_grad=True)
    y = ff(x)
    forward_calls = len(seen)
    y.sum().backward()
    assert forward_calls == 8 and len(seen) == 16, "each chunk recomputed once in the backward"
    assert set(seen) == {32}


def test_dropout_is_replayed_from_the_seed_and_leaves_global_rng_alone():
    ff = FeedForward(8, FeedForwardSpec(d_ff=32, chunk_len=8), dropout_rate=0.5).train()
    x = torch.randn(2, 32, 8, requires_grad=True)
    state = torch.get_rng_state()
    a, b, c = ff(x, seed=11), ff(x, seed=11), ff(x, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    # Gradients through recomputed chunks equal those of the same masks computed unchunked.
    whole = FeedForward(8, FeedForwardSpec(d_ff=32), dropout_rate=0.5).train()
    whole.load_state_dict(ff.state_dict())
    grads = torch.autograd.grad(ff(x, seed=11).pow(2).sum(), [x, *ff.parameters()])
    pieces = [whole._chunk(p, 11, i) for i, p in enumerate(x.split(8, dim=1))]
    expected = torch.autograd.grad(torch.cat(pieces, 1).pow(2).sum(), [x, *whole.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_dropout_without_seed_is_an_error():
    ff = FeedForward(8, FeedForwardSpec(d_ff=32), dropout_rate=0.1).train()
    with pytest.raises(ValueError, match="needs a seed"):
        ff(torch.randn(1, 4, 8))
    ff.eval()
    assert np.isfinite(ff(torch.randn(1, 4, 8)).detach().numpy()).all()
