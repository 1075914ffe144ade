"""The grid every benchmark module here is parametrised over, and the attn_benchmark fixture.

Each test that takes ``attention_point`` runs once per point: the six variants below at a few
CPU-sized lengths (ids like ``lsh-L1024-h2``). The modules differ only in the framework, so
``pytest benchmarks/pytest --benchmark-only --benchmark-group-by=param``
sets torch and JAX side by side.
"""

# The fixture until the pytest11 entry point registers the whole plugin (then the same function
# shadows itself: harmless). Not `pytest_plugins`: pytest refuses that in a conftest below the
# rootdir as soon as it is found during collection (`pytest benchmarks`).
from attnbench.pytest_plugin import attn_benchmark  # noqa: F401

LAYER_VARIANTS = ("full-naive", "full-fused", "full-shared-qk", "lsh")
MODEL_VARIANTS = ("reformer", "transformer")
HASHING_VARIANTS = ("lsh", "reformer")
LENGTHS = (256, 1024)
N_HASHES = 2

# Small enough that one point takes seconds on 2 CPU cores, long enough that LSH has several
# chunks to sort into (length / chunk_len = 4 and 16).
LAYER_SIZE = {"d_model": 64, "n_heads": 2, "chunk_len": 64}
MODEL_SIZE = {**LAYER_SIZE, "depth": 2, "d_ff": 128, "vocab_size": 256, "ff_chunk_len": 64,
              "causal": True}


def attention_points() -> list[tuple[str, dict]]:
    """(id, settings) for every variant and length."""
    points = []
    for variant in LAYER_VARIANTS + MODEL_VARIANTS:
        size = MODEL_SIZE if variant in MODEL_VARIANTS else LAYER_SIZE
        for length in LENGTHS:
            settings = {"variant": variant, "length": length, **size}
            point_id = f"{variant}-L{length}"
            if variant in HASHING_VARIANTS:
                settings["n_hashes"] = N_HASHES
                point_id += f"-h{N_HASHES}"
            points.append((point_id, settings))
    return points


def pytest_generate_tests(metafunc):
    if "attention_point" in metafunc.fixturenames:
        ids, settings = zip(*attention_points(), strict=True)
        metafunc.parametrize("attention_point", settings, ids=ids)
