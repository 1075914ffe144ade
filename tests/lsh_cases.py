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
