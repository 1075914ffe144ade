"""JAX feed-forward, reversible stack and models: against the reference, against themselves
(reversible vs plain autodiff) and against torch with the same weights."""

import itertools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import torch
from jax import lax

from attnbench import reference as R
from attnbench.convert import jax_to_torch, torch_to_jax
from attnbench.jax_impl import lsh_attention as jax_lsh
from attnbench.jax_impl.chunked_ff import feed_forward, init_feed_forward
from attnbench.jax_impl.common import derive_key
from attnbench.jax_impl.model import init_language_model, language_model
from attnbench.jax_impl.reversible import reversible_block, reversible_sequence
from attnbench.spec import AttentionSpec, FeedForwardSpec, ModelSpec
from attnbench.torch_impl import lsh_attention as torch_lsh
from attnbench.torch_impl.model import LanguageModel
from tests.tolerances import assert_close


def ff_reference_params(params):
    return {"ln_gamma": np.asarray(params["norm"]["weight"]),
            "ln_beta": np.asarray(params["norm"]["bias"]),
            "w1": np.asarray(params["w1"]["weight"]).T, "b1": np.asarray(params["w1"]["bias"]),
            "w2": np.asarray(params["w2"]["weight"]).T, "b2": np.asarray(params["w2"]["bias"])}


@pytest.mark.parametrize("chunk_len", [None, 16, 24], ids=["whole", "c16", "c24-ragged"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_feed_forward_matches_reference(rng, jax_device, chunk_len, activation):
    spec = FeedForwardSpec(d_ff=48, activation=activation, chunk_len=chunk_len)
    params = init_feed_forward(jax.random.key(0), 12, spec, jnp.float64)
    x = jnp.asarray(rng.standard_normal((2, 64, 12)))
    d_y = jnp.asarray(rng.standard_normal((2, 64, 12)))
    y, (d_params, d_x) = jax.jit(lambda p, a: (feed_forward(p, a, spec=spec), jax.vjp(
        lambda p_, a_: feed_forward(p_, a_, spec=spec), p, a)[1](d_y)))(params, x)
    ref = ff_reference_params(params)
    assert_close(y, R.feed_forward(np.asarray(x), ref, activation=activation), "float64", "y")
    ref_dx, ref_dp = R.feed_forward_vjp(np.asarray(x), ref, np.asarray(d_y),
                                        activation=activation)
    assert_close(d_x, ref_dx, "float64", "d_x")
    assert_close(np.asarray(d_params["w1"]["weight"]).T, ref_dp["w1"], "float64", "d_w1")
    assert_close(d_params["norm"]["weight"], ref_dp["ln_gamma"], "float64", "d_gamma")


def test_feed_forward_backward_is_chunked():
    """The compiled training step holds one chunk's hidden activation, not the sequence's."""
    def temp_bytes(chunk_len):
        spec = FeedForwardSpec(d_ff=1024, chunk_len=chunk_len)
        params = init_feed_forward(jax.random.key(0), 64, spec)
        x = jnp.ones((1, 2048, 64), jnp.float32)
        step = jax.jit(jax.grad(lambda p: feed_forward(p, x, spec=spec).sum()))
        return step.lower(params).compile().memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(None), temp_bytes(128)
    hidden = 2048 * 1024 * 4
    assert whole >= hidden and chunked <= whole / 4, (whole, chunked)


@pytest.mark.parametrize("chunk_len", [None, 16], ids=["whole", "c16"])
def test_feed_forward_torch_and_jax_agree(rng, chunk_len):
    from attnbench.torch_impl.chunked_ff import FeedForward

    spec = FeedForwardSpec(d_ff=48, chunk_len=chunk_len)
    torch.manual_seed(0)
    torch_ff = FeedForward(12, spec)
    params = torch_to_jax(torch_ff.state_dict())
    x = rng.standard_normal((2, 64, 12)).astype(np.float32)
    d_y = rng.standard_normal((2, 64, 12)).astype(np.float32)
    t_x = torch.tensor(x, requires_grad=True)
    t_y = torch_ff(t_x)
    t_y.backward(torch.tensor(d_y))
    y, pullback = jax.vjp(lambda p, a: feed_forward(p, a, spec=spec), params, jnp.asarray(x))
    d_params, d_x = pullback(jnp.asarray(d_y))
    assert_close(y, t_y.detach().numpy(), "float32", "y")
    assert_close(d_x, t_x.grad.numpy(), "float32", "d_x")
    assert_close(d_params["w1"]["weight"], torch_ff.w1.weight.grad.numpy(), "float32", "d_w1")
    assert_close(d_params["norm"]["bias"], torch_ff.norm.bias.grad.numpy(), "float32", "d_beta")


# ---------------------------------------------------------------------------------------------
# Reversible stack
# ---------------------------------------------------------------------------------------------


def ff_pair(rng_key, d_model=8):
    spec_f = FeedForwardSpec(d_ff=16, activation="gelu")
    spec_g = FeedForwardSpec(d_ff=16, activation="relu", chunk_len=4)
    k1, k2 = jax.random.split(rng_key)

    def f(p, x, key, buckets):
        return feed_forward(p, x, spec=spec_f, dropout_rate=0.3, key=key, train=True), None

    def g(p, x, key):
        return feed_forward(p, x, spec=spec_g, dropout_rate=0.3, key=key, train=True)

    return f, g, {"f": init_feed_forward(k1, d_model, spec_f, jnp.float64),
                  "g": init_feed_forward(k2, d_model, spec_g, jnp.float64)}


def test_reversible_custom_vjp_passes_check_grads_and_equals_plain_autodiff(rng):
    """Dropout 0.3 in both sublayers: equal gradients need an exact replay of the keys."""
    f, g, block = ff_pair(jax.random.key(1))
    blocks = [block, ff_pair(jax.random.key(2))[2]]
    keys = [jax.random.key(5), jax.random.key(6)]
    x1, x2 = (jnp.asarray(rng.standard_normal((1, 8, 8))) for _ in range(2))

    def run(reversible):
        def fn(bs, a, b):
            return jnp.concatenate(reversible_sequence(f, g, bs, a, b, keys=keys,
                                                       reversible=reversible), -1)
        return fn

    jax.test_util.check_grads(jax.jit(run(True)), (blocks, x1, x2), order=1, modes=("rev",))
    d_out = jnp.asarray(rng.standard_normal((1, 8, 16)))
    def grads(reversible):
        return jax.jit(lambda *a: jax.vjp(run(reversible), *a)[1](d_out))(blocks, x1, x2)

    rev, plain = grads(True), grads(False)
    for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_reversible_matches_reference_block(rng):
    f, g, block = ff_pair(jax.random.key(3))
    x1, x2 = (jnp.asarray(rng.standard_normal((2, 8, 8))) for _ in range(2))
    key = jax.random.key(0)
    y1, y2 = jax.jit(lambda a, b: reversible_sequence(f, g, [block], a, b, keys=[key]))(x1, x2)
    f_jit = jax.jit(lambda x: f(block["f"], x, derive_key(key, 0), None)[0])
    g_jit = jax.jit(lambda x: g(block["g"], x, derive_key(key, 1)))

    def ref_f(x):
        return np.asarray(f_jit(jnp.asarray(x)))

    def ref_g(x):
        return np.asarray(g_jit(jnp.asarray(x)))

    r1, r2 = R.reversible_block_forward(np.asarray(x1), np.asarray(x2), ref_f, ref_g)
    assert_close(y1, r1, "float64", "y1")
    assert_close(y2, r2, "float64", "y2")
    back1, back2 = R.reversible_block_inverse(np.asarray(y1), np.asarray(y2), ref_f, ref_g)
    assert_close(back1, x1, "float64", "inverse x1")
    assert_close(back2, x2, "float64", "inverse x2")


def hashing_f(p, x, key, buckets):
    """A small sublayer that hashes as LSH attention does (argmax of randomly rotated inputs,
    a constant; fresh rotations from ``key`` unless ``buckets`` replay) and whose output
    depends on the buckets: quick to compile, unlike a stack of LSH attention layers."""
    if buckets is None:
        rotation = jax.random.normal(key, (x.shape[-1], 4), x.dtype)
        buckets = jnp.argmax(lax.stop_gradient(x) @ rotation, -1).astype(jnp.int32)  # (B, L)
    return jnp.tanh(x @ p["w"]) * p["scale"][buckets][..., None], buckets


def hashing_blocks(rng, n_layers, d_model=8):
    _, g, _ = ff_pair(jax.random.key(0), d_model)
    return g, [{"f": {"w": jnp.asarray(rng.standard_normal((d_model, d_model))),
                      "scale": jnp.asarray(rng.standard_normal(4))},
                "g": ff_pair(jax.random.key(i), d_model)[2]["g"]} for i in range(n_layers)]


def test_mixed_bucket_list_replays_arrays_and_hashes_none_entries(rng):
    """A None entry hashes afresh from its layer's key, an array replays, in any mix (the torch
    stack's semantics too): replaying a layer's own buckets between None entries gives the
    result of giving none, and other buckets give the plain stack's values and gradients (the
    plain stack hashes a None layer with its key)."""
    g, blocks = hashing_blocks(rng, 3)
    keys = [jax.random.key(k) for k in (11, 12, 13)]
    x = jnp.asarray(rng.standard_normal((2, 16, 8)))

    def run(given, reversible=True):
        def fn(bs, x_):
            return jnp.concatenate(reversible_sequence(hashing_f, g, bs, x_, x_, keys=keys,
                                                       buckets=given, reversible=reversible), -1)
        return fn

    own, x1, x2 = [], x, x
    for params, key in zip(blocks, keys, strict=True):
        x1, x2, used = reversible_block(hashing_f, g, params, x1, x2, key=key)
        own.append(used)
    fresh = jax.jit(run(None))(blocks, x)
    np.testing.assert_allclose(jax.jit(run([None, own[1], None]))(blocks, x), fresh, rtol=0,
                               atol=1e-12)
    given = [None, jnp.asarray(rng.integers(0, 4, own[1].shape), jnp.int32), None]
    d_out = jnp.asarray(rng.standard_normal((2, 16, 16)))

    def value_and_grads(reversible):
        def fn(bs, x_):
            y, pullback = jax.vjp(run(given, reversible), bs, x_)
            return y, pullback(d_out)
        return jax.jit(fn)(blocks, x)

    (y_rev, g_rev), (y_plain, g_plain) = value_and_grads(True), value_and_grads(False)
    assert np.abs(y_rev - fresh).max() > 1e-3  # the given buckets were replayed
    np.testing.assert_allclose(y_rev, y_plain, rtol=0, atol=1e-12)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bucket_count_must_match_depth():
    g, blocks = hashing_blocks(np.random.default_rng(0), 2)
    x = jnp.zeros((1, 16, 8), jnp.float64)
    keys = [jax.random.key(1), jax.random.key(2)]
    with pytest.raises(ValueError, match=r"len\(buckets\)=1: must equal the number of blocks "
                                         r"\(2\); give None for a block that hashes afresh"):
        reversible_sequence(hashing_f, g, blocks, x, x, keys=keys, buckets=[None])


# ---------------------------------------------------------------------------------------------
# Models: torch <-> JAX parity with the same weights
# ---------------------------------------------------------------------------------------------

ATTENTIONS = {
    "lsh": AttentionSpec(kind="lsh", n_heads=2, causal=True, n_hashes=2, chunk_len=8),
    "shared_qk": AttentionSpec(kind="shared_qk", n_heads=2, causal=True),
    "full": AttentionSpec(kind="full", n_heads=2, causal=True, impl="naive"),
}
CASES = list(itertools.product(ATTENTIONS, [True, False]))


def model_spec(attention, reversible):
    return ModelSpec(vocab_size=17, d_model=16, n_layers=2, max_len=64,
                     attention=ATTENTIONS[attention], reversible=reversible,
                     tie_embeddings=not reversible,
                     feed_forward=FeedForwardSpec(d_ff=32, chunk_len=16),
                     positions="axial", axial_shape=(8, 8), axial_dims=(6, 10))


@pytest.mark.parametrize(("attention", "reversible"), CASES,
                         ids=[f"{a}-{'rev' if r else 'plain'}" for a, r in CASES])
def test_torch_and_jax_models_agree(rng, attention, reversible):
    """Logits, loss and every parameter gradient within 1e-5 relative (float32, CPU). LSH layers
    replay the same injected buckets in both (equal rotations could still round an argmax
    near-tie differently); dropout is 0 because the frameworks' RNGs differ."""
    spec = model_spec(attention, reversible)
    tokens = rng.integers(0, 17, (2, 64))
    buckets = None
    if attention == "lsh":
        buckets = [rng.integers(0, spec.attention.buckets_for(64), (2, 2, 2, 64)).astype(np.int32)
                   for _ in range(spec.n_layers)]
    assert_models_agree(spec, tokens, buckets)


@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_torch_and_jax_models_agree_on_a_mixed_bucket_list(rng, monkeypatch, attention):
    """Reversible stack, buckets [None, array]: layer 0 hashes afresh, layer 1 replays (layers
    that do not hash ignore both). The frameworks' RNGs differ, so both draw the same fixed
    rotations here: the fresh hash is then the same computation in both (float32 rounding could
    flip an argmax near-tie; this seeded case has none, or the logits would differ)."""
    spec = model_spec(attention, True)
    n_buckets = spec.attention.buckets_for(64)
    shape = (2, 8, 2, n_buckets // 2)  # (heads, d_head, n_hashes, n_buckets / 2)
    rotations = rng.standard_normal(shape).astype(np.float32)

    def torch_rotations(*args, generator, device):
        assert args == (2, 8, 2, n_buckets)
        return torch.tensor(rotations, device=device)

    def jax_rotations(key, *args):
        assert args == (2, 8, 2, n_buckets)
        return jnp.asarray(rotations)

    monkeypatch.setattr(torch_lsh, "draw_rotations", torch_rotations)
    monkeypatch.setattr(jax_lsh, "draw_rotations", jax_rotations)
    tokens = rng.integers(0, 17, (2, 64))
    buckets = [None, rng.integers(0, n_buckets, (2, 2, 2, 64)).astype(np.int32)]
    assert_models_agree(spec, tokens, buckets)


def assert_models_agree(spec, tokens, buckets):
    """Logits, loss and every parameter gradient of the torch and JAX models with the same
    weights, each replaying ``buckets`` (numpy arrays or None entries, or None)."""
    torch.manual_seed(0)
    torch_model = LanguageModel(spec).train()
    params = torch_to_jax(torch_model.state_dict(), tie_embeddings=spec.tie_embeddings)

    def loss_fn(logits, targets):
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 17),
                                                 targets[:, 1:].reshape(-1))

    t_tokens = torch.tensor(tokens)
    t_logits = torch_model(t_tokens, generator=torch.Generator().manual_seed(0),
                           buckets=None if buckets is None else [
                               None if b is None else torch.tensor(b) for b in buckets])
    t_loss = loss_fn(t_logits, t_tokens)
    t_loss.backward()
    t_grads = torch_to_jax({n: p.grad for n, p in torch_model.named_parameters()},
                           tie_embeddings=False)

    def j_loss(p):
        logits = language_model(p, jnp.asarray(tokens), spec=spec, key=jax.random.key(0),
                                train=True,
                                buckets=None if buckets is None else [
                                    None if b is None else jnp.asarray(b) for b in buckets])
        log_probs = jax.nn.log_softmax(logits[:, :-1], -1)
        targets = jnp.asarray(tokens)[:, 1:]
        return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], -1)), logits

    (j_value, j_logits), j_grads = jax.jit(jax.value_and_grad(j_loss, has_aux=True))(params)
    assert_close(j_logits, t_logits.detach().numpy(), "float32", "logits")
    assert_close(j_value, t_loss.item(), "float32", "loss")
    flat_t = dict(_flat(t_grads))
    flat_j = dict(_flat(j_grads))
    assert set(flat_j) <= set(flat_t) and len(flat_j) >= 10
    for name, grad in flat_j.items():
        assert_close(grad, flat_t[name], "float32", f"d_{name}")


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def test_weights_round_trip_between_frameworks():
    spec = model_spec("lsh", True)
    params = init_language_model(jax.random.key(0), spec)
    torch_model = LanguageModel(spec)
    torch_model.load_state_dict(jax_to_torch(params))
    back = torch_to_jax(torch_model.state_dict())
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)


def test_jit_does_not_retrace_for_the_same_shapes():
    spec = model_spec("lsh", True)
    params = init_language_model(jax.random.key(0), spec)
    traces = []

    @jax.jit
    def step(p, tokens, key):
        traces.append(1)  # runs only while tracing
        return jax.grad(lambda q: language_model(q, tokens, spec=spec, key=key,
                                                 train=True).sum())(p)

    tokens = jnp.zeros((1, 64), jnp.int32)
    step(params, tokens, jax.random.key(0))
    step(params, tokens + 1, jax.random.key(1))
    assert len(traces) == 1


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (jnp.zeros((1, 60), jnp.int32), r"length=60: must be a multiple"),
        (jnp.zeros((1, 128), jnp.int32), r"length=128: must be <= ModelSpec.max_len=64"),
        (jnp.full((1, 64), 17, jnp.int32), r"ids must lie in \[0, vocab_size=17\)"),
        (jnp.zeros((1, 64)), r"tokens: must be an integer tensor"),
    ],
)
def test_bad_tokens_raise_the_torch_errors(tokens, message):
    spec = model_spec("lsh", True)
    params = init_language_model(jax.random.key(0), spec)
    with pytest.raises(ValueError, match=message):
        language_model(params, tokens, spec=spec, key=jax.random.key(0))
    with pytest.raises(ValueError, match=message):
        LanguageModel(spec)(torch.tensor(np.asarray(tokens)))


@pytest.mark.parametrize("reversible", [True, False], ids=["rev", "plain"])
def test_a_bucket_list_of_the_wrong_length_raises_the_torch_error(reversible):
    spec = model_spec("lsh", reversible)
    params = init_language_model(jax.random.key(0), spec)
    tokens = np.zeros((1, 64), np.int32)
    message = (r"len\(buckets\)=1: must equal ModelSpec.n_layers=2; give None for a layer "
               r"that hashes afresh")
    with pytest.raises(ValueError, match=message):
        language_model(params, jnp.asarray(tokens), spec=spec, key=jax.random.key(0),
                       buckets=[None])
    with pytest.raises(ValueError, match=message):
        LanguageModel(spec)(torch.tensor(tokens), buckets=[None])
