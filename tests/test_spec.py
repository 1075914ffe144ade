import dataclasses

import pytest

from attnbench.spec import AttentionSpec, FeedForwardSpec, ModelSpec, default_n_buckets


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sparse"}, r"AttentionSpec.kind='sparse': must be one of full, shared_qk, lsh"),
        ({"n_buckets": 7}, r"AttentionSpec.n_buckets=7: must be even"),
        ({"n_buckets": 0}, r"AttentionSpec.n_buckets=0: must be >= 2"),
        ({"n_hashes": 0}, r"AttentionSpec.n_hashes=0: must be >= 1"),
        ({"n_heads": 2.0}, r"AttentionSpec.n_heads=2.0: must be an int"),
        ({"impl": "flash"}, r"AttentionSpec.impl='flash': must be one of naive, fused"),
        ({"causal": True, "n_chunks_after": 1}, r"AttentionSpec.n_chunks_after=1: must be 0"),
        ({"causal": 1}, r"AttentionSpec.causal=1: must be a bool"),
    ],
)
def test_attention_spec_rejects_bad_values_naming_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionSpec(**kwargs)


def test_length_must_be_a_multiple_of_chunk_len_for_lsh_only():
    with pytest.raises(ValueError, match=r"length=100: must be a multiple of .*chunk_len=64"):
        AttentionSpec(kind="lsh", chunk_len=64).check_length(100)
    AttentionSpec(kind="full").check_length(100)


def test_d_model_must_divide_by_heads():
    with pytest.raises(ValueError, match=r"d_model=100: must be divisible by .*n_heads=3"):
        AttentionSpec(n_heads=3).check_d_model(100)
    with pytest.raises(ValueError, match=r"ModelSpec.d_model=100: .*n_heads=3"):
        ModelSpec(d_model=100, attention=AttentionSpec(n_heads=3))
    assert ModelSpec(d_model=96, attention=AttentionSpec(n_heads=3)).d_head == 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dropout": 1.0}, r"ModelSpec.dropout=1.0: must be a number in \[0, 1\)"),
        ({"max_len": 1000}, r"length=1000: must be a multiple of AttentionSpec.chunk_len=64"),
        ({"positions": "axial", "axial_shape": (32, 16), "axial_dims": (128, 128)},
         r"ModelSpec.axial_shape=\(32, 16\): must multiply to max_len=1024"),
        ({"positions": "axial", "axial_shape": (32, 32), "axial_dims": (128, 64)},
         r"ModelSpec.axial_dims=\(128, 64\): must sum to d_model=256"),
        ({"tie_embeddings": True}, r"ModelSpec.tie_embeddings=True: needs reversible=False"),
        ({"positions": "rotary"}, r"ModelSpec.positions='rotary'"),
    ],
)
def test_model_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)


def test_feed_forward_spec_rejects_bad_values():
    with pytest.raises(ValueError, match=r"FeedForwardSpec.chunk_len=0: must be >= 1"):
        FeedForwardSpec(chunk_len=0)
    with pytest.raises(ValueError, match=r"FeedForwardSpec.activation='tanh'"):
        FeedForwardSpec(activation="tanh")


def test_specs_are_frozen_values():
    spec = ModelSpec.reformer()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.d_model = 3
    assert spec == ModelSpec.reformer() and hash(spec) == hash(ModelSpec.reformer())
    assert spec.replace(n_layers=6).n_layers == 6


def test_model_length_checks():
    spec = ModelSpec.reformer(max_len=256)
    with pytest.raises(ValueError, match=r"length=512: must be <= ModelSpec.max_len=256"):
        spec.check_length(512)
    with pytest.raises(ValueError, match=r"length=100: must be a multiple"):
        spec.check_length(100)


def test_default_bucket_count_is_a_pure_function_of_the_shapes():
    spec = AttentionSpec(kind="lsh", chunk_len=64)
    assert spec.buckets_for(16384) == default_n_buckets(16384, 64) == 512
    assert spec.buckets_for(128) == 4 and spec.n_buckets is None  # never written back
    assert AttentionSpec(n_buckets=256).buckets_for(16384) == 256
