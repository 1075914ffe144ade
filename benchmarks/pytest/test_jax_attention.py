"""JAX: forward + backward of every variant in the grid (see conftest.py).

Mirrors test_torch_attention.py line for line; only FRAMEWORK differs.
"""

FRAMEWORK = "jax"


def test_forward_backward(attn_benchmark, attention_point):
    info = attn_benchmark(framework=FRAMEWORK, mode="forward-backward", **attention_point)
    assert info["case"]["framework"] == FRAMEWORK
    if attention_point["variant"] == "lsh":  # untimed: LSH against exact shared-QK attention
        attn_benchmark.attach_approximation(n_seeds=3)
