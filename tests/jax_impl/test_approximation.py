"""LSH approximation metrics (JAX): exact where LSH must be exact, recall against the NumPy
reference, monotone in the number of hashes, and the hash's known collision curve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnbench import reference as R
from attnbench.jax_impl import full_attention
from attnbench.jax_impl.approximation import (
    attended_keys,
    attention_recall,
    collision_rate,
    measure_approximation,
    trained_inputs,
)
from attnbench.jax_impl.full_attention import shared_qk_attention
from attnbench.jax_impl.lsh_attention import hash_vectors
from attnbench.spec import AttentionSpec
from attnbench.tasks import approx_inputs
from attnbench.tasks.checkpoint import load_trained
from tests.tolerances import TOLERANCE

# A binomial share estimated from n draws is within 4 standard errors of its probability
# except with chance ~6e-5 (and the draws here are seeded: the outcome is fixed).
SIGMAS = 4.0


def measure(n_hashes=1, *, inputs="random", length=64, chunk_len=8, n_buckets=None,
            causal=True, n_seeds=4, dtype="float32", **kwargs):
    spec = AttentionSpec(kind="lsh", n_heads=2, causal=causal, n_hashes=n_hashes,
                         chunk_len=chunk_len, n_buckets=n_buckets)
    args = dict(attention=spec, d_model=32, length=length, batch=2, inputs=inputs,
                n_clusters=4, n_seeds=n_seeds, seed=0, device="cpu", dtype=dtype) | kwargs
    return measure_approximation(**args)


@pytest.mark.parametrize(("causal", "n_hashes"), [(True, 1), (False, 2)],
                         ids=["causal-h1", "bidirectional-h2"])  # each compiles: two cases
def test_two_buckets_and_one_chunk_per_round_is_exact(causal, n_hashes):
    """A chunk covering the sequence puts every key in every query's window (each the same
    number of times), so LSH is exact shared-QK attention up to rounding."""
    result = measure(n_hashes, length=32, chunk_len=32, n_buckets=2, causal=causal)
    tol = TOLERANCE["float32"]
    for name in ("approx_out_rel_err", "approx_grad_rel_err"):
        assert result[name] <= tol, f"{name}: {result[name]:.3e} exceeds {tol:.0e}"
    assert abs(result["approx_recall"] - 1) <= tol, result["approx_recall"]
    assert result["approx_n_seeds"] == 4


def test_low_precision_exact_case_is_within_the_dtype_tolerance():
    result = measure(1, length=32, chunk_len=32, n_buckets=2, dtype="bfloat16")
    assert result["approx_out_rel_err"] <= TOLERANCE["bfloat16"], result


@pytest.mark.parametrize("inputs", ["random", "clustered"])
def test_recall_rises_and_error_falls_with_n_hashes(inputs):
    results = [measure(n, inputs=inputs) for n in (1, 2, 4)]  # torch's test adds 8 (compiles)
    recall = [r["approx_recall"] for r in results]
    error = [r["approx_out_rel_err"] for r in results]
    assert (np.diff(recall) > 0).all(), recall
    assert (np.diff(error) < 0).all(), error
    assert all(0 < r["approx_recall_ci"] < 0.1 for r in results), results


def test_clustered_keys_are_recalled_better_than_random_ones():
    """Hashing finds structure: with the mass of each query on its own cluster, one round of
    LSH recovers far more of it than on structureless inputs."""
    clustered, random = measure(1, inputs="clustered"), measure(1, inputs="random")
    gap = clustered["approx_recall_ci"] + random["approx_recall_ci"]
    assert clustered["approx_recall"] > random["approx_recall"] + gap, (clustered, random)


@pytest.mark.parametrize(("n_hashes", "n_buckets", "chunk_len", "before", "after", "causal"), [
    (1, 8, 4, 1, 0, True),
    (3, 4, 8, 1, 0, True),
    (2, 6, 4, 2, 1, False),
], ids=["h1-c4", "h3-c8", "h2-before2-after1"])
def test_recall_matches_the_reference(rng, n_hashes, n_buckets, chunk_len, before, after,
                                      causal):
    qk = rng.standard_normal((2, 2, 24, 5))
    rotations = rng.standard_normal((2, 5, n_hashes, n_buckets // 2))
    spec = AttentionSpec(kind="lsh", n_heads=2, causal=causal, n_hashes=n_hashes,
                         n_buckets=n_buckets, chunk_len=chunk_len, n_chunks_before=before,
                         n_chunks_after=after)
    qk_j = jnp.asarray(qk, jnp.float64)
    buckets = jax.jit(hash_vectors)(qk_j, jnp.asarray(rotations))
    recall = jax.jit(attention_recall, static_argnames=("spec", "n_buckets"))(
        qk_j, buckets, spec=spec, n_buckets=n_buckets)
    expected = R.lsh_recall(qk, np.asarray(buckets), n_buckets=n_buckets, chunk_len=chunk_len,
                            causal=causal, n_chunks_before=before, n_chunks_after=after)
    np.testing.assert_allclose(np.asarray(recall), expected, rtol=0, atol=TOLERANCE["float64"])
    assert expected.min() < 1  # some query misses mass: the check is not vacuous


# (mask constant of the attention changed, causal): None leaves the masking as it is.
MASK_CASES = [(None, True), (None, False), ("SELF_MASK_VALUE", True),
              ("SELF_MASK_VALUE", False), ("MASK_VALUE", True)]


@pytest.mark.parametrize(("changed", "causal"), MASK_CASES,
                         ids=[f"{c or 'as-is'}-{'causal' if k else 'bidirectional'}"
                              for c, k in MASK_CASES])
def test_recall_weighs_the_probabilities_the_attention_uses(rng, monkeypatch, changed, causal):
    """Recall's exact probabilities are exact shared-QK attention's own. They are read off the
    attention itself (identity values: out = P @ I = P) and summed over the keys LSH attends to;
    recall must equal that sum. With one of the attention's mask values changed, recall must
    follow it: masking re-implemented in the approximation would keep measuring the old
    distribution."""
    length = 24
    if changed is not None:
        monkeypatch.setattr(full_attention, changed, 0.0)
    qk = jnp.asarray(rng.standard_normal((2, 2, length, 5)), jnp.float64)
    rotations = jnp.asarray(rng.standard_normal((2, 5, 1, 4)))
    spec = AttentionSpec(kind="lsh", n_heads=2, causal=causal, n_hashes=1, n_buckets=8,
                         chunk_len=4)
    buckets = hash_vectors(qk, rotations)
    identity = jnp.broadcast_to(jnp.eye(length, dtype=qk.dtype), (2, 2, length, length))
    # Run eagerly (no jit cache to hold a trace made before the change).
    probs = shared_qk_attention(qk, identity, causal=causal)  # the attention's own P
    unchanged = R.shared_qk_attention(np.asarray(qk), np.asarray(identity), causal=causal)
    if changed is None:
        np.testing.assert_allclose(probs, unchanged, rtol=0, atol=TOLERANCE["float64"])
    else:  # the change reached the attention: it weighs keys differently
        assert np.abs(np.asarray(probs) - unchanged).max() > 1e-2
    attended = attended_keys(buckets, n_buckets=8, chunk_len=4, n_chunks_before=1,
                             n_chunks_after=0)
    expected = jnp.sum(jnp.where(attended, probs, 0.0), -1)
    recall = attention_recall(qk, buckets, spec=spec, n_buckets=8)
    np.testing.assert_allclose(recall, expected, rtol=0, atol=TOLERANCE["float64"])
    assert expected.min() < 1  # some query misses mass: the check is not vacuous


def test_two_bucket_collision_rate_is_one_minus_angle_over_pi(rng):
    n_rounds, d = 4000, 16
    angles = np.array([0.1, 0.25, 0.5, 0.75, 0.9]) * math.pi
    a = rng.standard_normal((len(angles), d))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    ortho = rng.standard_normal((len(angles), d))
    ortho -= np.sum(ortho * a, 1, keepdims=True) * a
    ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
    b = np.cos(angles)[:, None] * a + np.sin(angles)[:, None] * ortho
    rate = collision_rate(a, b, n_buckets=2, n_rounds=n_rounds, seed=0)
    expected = 1 - angles / math.pi
    bound = SIGMAS * np.sqrt(expected * (1 - expected) / n_rounds)
    assert (np.abs(rate - expected) <= bound).all(), (rate, expected, bound)
    more = collision_rate(a, b, n_buckets=8, n_rounds=n_rounds, seed=0)
    assert (np.diff(more) < 0).all() and (more < rate).all()  # finer buckets collide less


@pytest.mark.parametrize("inputs", ["random", "clustered"])
def test_torch_and_jax_measure_the_same_numbers(inputs):
    """Same NumPy inputs and rotations: the two frameworks hash alike and differ by rounding."""
    from attnbench.torch_impl.approximation import measure_approximation as torch_measure

    spec = AttentionSpec(kind="lsh", n_heads=2, causal=True, n_hashes=2, chunk_len=8)
    args = dict(attention=spec, d_model=32, length=64, batch=2, inputs=inputs, n_clusters=4,
                n_seeds=3, seed=5, device="cpu", dtype="float32")
    ours, theirs = measure_approximation(**args), torch_measure(**args)
    assert ours["approx_n_seeds"] == theirs["approx_n_seeds"] == 3
    for name in ("approx_out_rel_err", "approx_grad_rel_err", "approx_recall"):
        assert abs(ours[name] - theirs[name]) <= TOLERANCE["float32"] * max(1, theirs[name]), (
            name, ours[name], theirs[name])


def test_trained_inputs_come_from_a_trained_layer_and_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(approx_inputs, "TRAINED_STEPS", 100)  # plumbing, not convergence
    base = dict(inputs="trained", n_seeds=2, checkpoint_dir=tmp_path)
    one, four = measure(1, **base), measure(4, **base)
    (path,) = tmp_path.glob("duplication-jax-*.npz")
    curve = load_trained(path).loss_curve
    assert curve[-1][0] == 100 and curve[-1][1] < curve[0][1]  # the layer was trained
    assert one["approx_recall"] < four["approx_recall"] <= 1 + TOLERANCE["float32"]
    qk, v = trained_inputs(seed=3, model_seed=0, batch=2, n_heads=2, length=64, d_model=32,
                           checkpoint_dir=tmp_path)
    assert qk.shape == v.shape == (2, 2, 64, 16)
    again, _ = trained_inputs(seed=3, model_seed=0, batch=2, n_heads=2, length=64, d_model=32,
                              checkpoint_dir=tmp_path)
    other, _ = trained_inputs(seed=4, model_seed=0, batch=2, n_heads=2, length=64, d_model=32,
                              checkpoint_dir=tmp_path)
    assert np.array_equal(qk, again) and not np.array_equal(qk, other)


def test_a_single_seed_has_an_unknown_interval():
    result = measure(2, n_seeds=1)
    assert math.isnan(result["approx_recall_ci"]) and result["approx_n_seeds"] == 1


@pytest.mark.parametrize(("changes", "message"), [
    (dict(inputs="uniform"), "inputs='uniform': must be one of random, clustered, trained"),
    (dict(inputs="clustered", n_clusters=0), "n_clusters=0: must be an int >= 1"),
    (dict(dtype="float64"), "dtype='float64': must be one of"),
    (dict(n_seeds=0), "n_seeds=0: must be an int >= 1"),
    (dict(length=60), "length=60: must be a multiple of AttentionSpec.chunk_len=8"),
    (dict(attention=AttentionSpec(kind="shared_qk", n_heads=2)), "must be an AttentionSpec of"),
])
def test_bad_arguments_name_the_value_and_rule(changes, message):
    with pytest.raises(ValueError, match=message):
        measure(1, **changes)
