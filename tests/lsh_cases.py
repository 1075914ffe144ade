"""LSH configurations both frameworks are tested on: awkward head sizes, 1/2/4 hashes, several
lengths and chunk lengths, look-ahead, dedup, and one chunk per round."""

import pytest

LSH_ARGNAMES = ("length", "d_head", "n_hashes", "n_buckets", "chunk_len", "n_before", "n_after",
                "dedup")
LSH_CASES = [
    pytest.param(64, 7, 1, 8, 8, 1, 0, False, id="L64-d7-h1-c8"),
    pytest.param(96, 59, 2, 6, 16, 1, 0, False, id="L96-d59-h2-c16"),
    pytest.param(64, 8, 4, 4, 4, 1, 0, False, id="L64-d8-h4-c4"),
    pytest.param(48, 5, 2, 8, 8, 2, 1, False, id="L48-d5-h2-before2-after1"),
    pytest.param(32, 6, 4, 4, 8, 1, 0, True, id="L32-d6-h4-dedup"),
    pytest.param(32, 4, 2, 2, 32, 1, 0, False, id="L32-one-chunk-per-round"),
]

# Shapes the fused kernels take (chunk_len a power of two >= 16), sized for their CPU
# interpreters: odd head counts, d_head 32 / 64 / 24, 1-8 hashes, causal and not, look-ahead,
# and fewer chunks than the window (the same chunk twice in one window).
KERNEL_ARGNAMES = ("heads", "length", "d_head", "n_hashes", "chunk_len", "n_before", "n_after",
                   "causal")
KERNEL_CASES = [
    pytest.param(3, 64, 32, 1, 16, 1, 0, True, id="H3-L64-d32-h1-causal"),
    pytest.param(3, 32, 64, 4, 16, 1, 0, False, id="H3-L32-d64-h4"),
    pytest.param(1, 32, 32, 8, 16, 1, 0, True, id="H1-L32-d32-h8-causal"),
    pytest.param(2, 48, 24, 2, 16, 2, 1, False, id="H2-L48-d24-h2-before2-after1"),
    pytest.param(2, 16, 32, 1, 16, 2, 0, True, id="H2-L16-d32-h1-window-over-all-chunks-causal"),
]
