import itertools

import pytest
import torch

from attnbench.spec import AttentionSpec, FeedForwardSpec, ModelSpec
from attnbench.torch_impl.model import LanguageModel, ReformerLM, TransformerLM


def small(**changes):
    base = ModelSpec.reformer(
        vocab_size=17, d_model=16, n_layers=2, max_len=64,
        attention=AttentionSpec(kind="lsh", n_heads=2, causal=True, n_hashes=2, chunk_len=8),
        feed_forward=FeedForwardSpec(d_ff=32, chunk_len=16))
    return base.replace(**changes)


ATTENTIONS = {
    "lsh": AttentionSpec(kind="lsh", n_heads=2, causal=True, n_hashes=2, chunk_len=8),
    "shared_qk": AttentionSpec(kind="shared_qk", n_heads=2, causal=True),
    "full-naive": AttentionSpec(kind="full", n_heads=2, causal=True, impl="naive"),
    "full-fused": AttentionSpec(kind="full", n_heads=2, causal=False, impl="fused"),
}
ABLATIONS = list(itertools.product(ATTENTIONS, [True, False], [None, 16]))


@pytest.mark.parametrize(("attention", "reversible", "ff_chunk"), ABLATIONS,
                         ids=[f"{a}-{'rev' if r else 'plain'}-ff{c}" for a, r, c in ABLATIONS])
def test_every_ablation_trains(device, attention, reversible, ff_chunk):
    spec = small(attention=ATTENTIONS[attention], reversible=reversible, dropout=0.1,
                 feed_forward=FeedForwardSpec(d_ff=32, chunk_len=ff_chunk))
    torch.manual_seed(0)
    model = LanguageModel(spec, device=device).train()
    tokens = torch.randint(0, 17, (2, 64), device=device)
    logits = model(tokens, generator=torch.Generator().manual_seed(1))
    assert logits.shape == (2, 64, 17) and logits.dtype == torch.float32
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 17),
                                             tokens[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("positions", ["learned", "axial", "none"])
def test_position_kinds(positions):
    axial = {"axial_shape": (8, 8), "axial_dims": (6, 10)} if positions == "axial" else {}
    model = ReformerLM(small(positions=positions, **axial)).eval()
    logits = model(torch.randint(0, 17, (1, 32)))  # shorter than max_len
    assert logits.shape == (1, 32, 17)


def test_reversible_model_equals_its_plain_autograd_twin(rng):
    model = ReformerLM(small(dropout=0.2)).double().train()
    tokens = torch.randint(0, 17, (2, 64))

    def run(reversible):
        model.stack.reversible = reversible
        model.zero_grad()
        logits = model(tokens, generator=torch.Generator().manual_seed(9))
        logits.logsumexp(-1).mean().backward()
        return logits, {n: p.grad.clone() for n, p in model.named_parameters()}

    logits_rev, grads_rev = run(True)
    logits_plain, grads_plain = run(False)
    torch.testing.assert_close(logits_rev, logits_plain, rtol=0, atol=1e-12)
    for name in grads_rev:
        torch.testing.assert_close(grads_rev[name], grads_plain[name], rtol=1e-9, atol=1e-10,
                                   msg=name)


def test_generator_makes_runs_reproducible_without_touching_global_rng():
    model = ReformerLM(small(dropout=0.3)).train()
    tokens = torch.randint(0, 17, (1, 64))
    state = torch.get_rng_state()
    a = model(tokens, generator=torch.Generator().manual_seed(4))
    b = model(tokens, generator=torch.Generator().manual_seed(4))
    c = model(tokens, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_transformer_is_causal():
    model = TransformerLM(small(attention=ATTENTIONS["full-naive"], reversible=False,
                                tie_embeddings=True)).eval()
    tokens = torch.randint(0, 17, (1, 64))
    changed = tokens.clone()
    changed[0, 30:] = (changed[0, 30:] + 1) % 17
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :30], after[:, :30], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 30:], after[:, 30:])
    assert model.head.weight is model.embed.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_model_gives_float32_logits(dtype):
    model = ReformerLM(small(), dtype=dtype).train()
    logits = model(torch.randint(0, 17, (1, 64)), generator=torch.Generator().manual_seed(0))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (torch.zeros(1, 60, dtype=torch.long), r"length=60: must be a multiple"),
        (torch.zeros(1, 128, dtype=torch.long), r"length=128: must be <= ModelSpec.max_len=64"),
        (torch.full((1, 64), 17), r"ids must lie in \[0, vocab_size=17\)"),
        (torch.zeros(64), r"tokens: must be an integer tensor \[batch, length\]"),
        (torch.zeros(1, 64), r"tokens: must be an integer tensor"),
    ],
)
def test_bad_tokens_raise_value_error(tokens, message):
    with pytest.raises(ValueError, match=message):
        ReformerLM(small())(tokens)


def test_default_models():
    assert ReformerLM().spec == ModelSpec.reformer()
    assert TransformerLM().spec.attention.kind == "full"
