"""Seeded NumPy generators of the synthetic tasks: one source of data for both frameworks.

Every batch is a pure function of (task settings, seed, stream, index): the same arguments give
the same arrays in any process and either framework, and no generator state is carried between
batches (training can stop, resume or be re-run from a checkpoint and see the same data).

A batch is language-model shaped: ``tokens`` [batch, length] is the model input, ``targets``
[batch, length] the next token at each position, and ``mask`` [batch, length] marks the targets
that count in the loss and the accuracy (positions whose next token is predictable).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

TASKS = ("duplication", "recall")
SEPARATOR = 0  # the `0` of `0 w 0 w`; the separator / query marker of associative recall
TRAIN_STREAM, EVAL_STREAM, APPROX_STREAM = 0, 1, 2


class Batch(NamedTuple):
    tokens: np.ndarray  # int32 [batch, length]: the model's input
    targets: np.ndarray  # int32 [batch, length]: the token after each position (0 where unused)
    mask: np.ndarray  # bool [batch, length]: targets scored by the loss and accuracy


def _check(name: str, value: int, rule: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: {rule}")


def _next_token_batch(sequences: np.ndarray, scored_from: int) -> Batch:
    """Sequences [B, L] -> a batch predicting s[t + 1] at t, scored where t + 1 >= scored_from."""
    batch, length = sequences.shape
    targets = np.zeros_like(sequences)
    targets[:, :-1] = sequences[:, 1:]  # the last position has no next token: never scored
    mask = np.zeros((batch, length), dtype=bool)
    mask[:, scored_from - 1: length - 1] = True
    return Batch(sequences.astype(np.int32), targets.astype(np.int32), mask)


def duplication(rng: np.random.Generator, *, batch: int, length: int, vocab_size: int) -> Batch:
    """The paper's duplication task: sequences ``0 w 0 w`` with w of length ``length / 2 - 1``
    drawn uniformly from symbols 1..vocab_size-1.

    Only the second copy of w is scored: the targets at positions ``length/2 .. length-2`` are
    the symbols of the second w (``length / 2 - 1`` of them), each a copy of the symbol
    ``length / 2`` positions earlier. The first w is unpredictable and is never scored.
    """
    _check("length", length, "must be even and >= 4 (0 w 0 w with |w| >= 1)",
           length >= 4 and length % 2 == 0)
    _check("vocab_size", vocab_size, "must be >= 2 (the separator 0 and a symbol)",
           vocab_size >= 2)
    half = length // 2
    w = rng.integers(1, vocab_size, size=(batch, half - 1))  # (B, L/2 - 1)
    sep = np.full((batch, 1), SEPARATOR)
    sequences = np.concatenate([sep, w, sep, w], axis=1)  # (B, L)
    return _next_token_batch(sequences, scored_from=half + 1)


def recall_layout(length: int, vocab_size: int) -> tuple[int, int]:
    """(n_pairs, n_keys) of associative recall: keys are symbols 1..n_keys, values the symbols
    after them; a sequence holds as many distinct keys as fit in ``length`` and the key set."""
    n_keys = (vocab_size - 1) // 2
    n_pairs = min(length // 2 - 1, n_keys)
    return n_pairs, n_keys


def recall(rng: np.random.Generator, *, batch: int, length: int, vocab_size: int) -> Batch:
    """Associative recall: ``pad.. k1 v1 k2 v2 .. kn vn 0 q`` where the keys are distinct symbols
    from 1..n_keys, the values symbols from n_keys+1..vocab_size-1, and q is one of the keys.

    Only the last position is scored: its target is the value that followed q. Sequences are
    left-padded with the separator when the key set is smaller than the length allows.
    """
    _check("length", length, "must be even and >= 4 (one pair, separator, query)",
           length >= 4 and length % 2 == 0)
    _check("vocab_size", vocab_size, "must be >= 5 (separator, two keys, two values)",
           vocab_size >= 5)
    n_pairs, n_keys = recall_layout(length, vocab_size)
    n_values = vocab_size - 1 - n_keys
    keys = np.argsort(rng.random((batch, n_keys)), axis=1)[:, :n_pairs] + 1  # (B, n), distinct
    values = rng.integers(n_keys + 1, n_keys + 1 + n_values, size=(batch, n_pairs))
    pick = rng.integers(0, n_pairs, size=batch)
    rows = np.arange(batch)
    pairs = np.stack([keys, values], axis=2).reshape(batch, 2 * n_pairs)  # k1 v1 k2 v2 ...
    pad = np.full((batch, length - 2 * n_pairs - 2), SEPARATOR)
    query = np.stack([np.full(batch, SEPARATOR), keys[rows, pick]], axis=1)
    sequences = np.concatenate([pad, pairs, query], axis=1)  # (B, L)
    targets = np.zeros_like(sequences)
    targets[:, -1] = values[rows, pick]  # the token that would follow q: its value
    mask = np.zeros((batch, length), dtype=bool)
    mask[:, -1] = True
    return Batch(sequences.astype(np.int32), targets.astype(np.int32), mask)


_GENERATORS = {"duplication": duplication, "recall": recall}


def stream_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of batch ``index`` of ``stream`` (train, eval, approx) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def make_batch(task: str, *, seed: int, stream: int, index: int, batch: int, length: int,
               vocab_size: int) -> Batch:
    """Batch ``index`` of ``stream``: deterministic in all arguments, independent of others."""
    if task not in _GENERATORS:
        raise ValueError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    return _GENERATORS[task](stream_rng(seed, stream, index), batch=batch, length=length,
                             vocab_size=vocab_size)
