"""Published numbers the report draws beside ours (source: shared/reference/paper-results.md).

Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer", ICLR 2020, Table 2: accuracy
on the duplication task of a 1-layer model, trained (rows) and evaluated (columns) with full
attention or LSH attention with 8, 4, 2, 1 hashes.
"""

TABLE2_EVAL = ("full", "lsh-8", "lsh-4", "lsh-2", "lsh-1")
TABLE2_TRAIN = ("full", "lsh-4", "lsh-2", "lsh-1")
TABLE2_ACCURACY = {  # fractions
    "full": (1.000, 0.948, 0.925, 0.769, 0.525),
    "lsh-4": (0.008, 1.000, 0.999, 0.994, 0.919),
    "lsh-2": (0.008, 1.000, 0.999, 0.981, 0.868),
    "lsh-1": (0.008, 0.999, 0.996, 0.948, 0.779),
}
TABLE2_SOURCE = "Reformer (ICLR 2020), Table 2: length 1024, 150K steps"
