"""Weights between frameworks: a torch state dict <-> the JAX parameter pytree.

The JAX pytrees use the torch modules' names and [out, in] layouts, so a state-dict key such as
``stack.blocks.0.f.attention.w_qk.weight`` is the pytree path
``params["stack"]["blocks"][0]["f"]["attention"]["w_qk"]["weight"]``; integer path components
are list indices. Nothing is transposed or renamed. Imports torch and jax only when called.
"""

from __future__ import annotations

from typing import Any


def torch_to_jax(state_dict, *, tie_embeddings: bool = False) -> dict:
    """A torch state dict -> the JAX pytree (jax arrays, same dtypes)."""
    import jax.numpy as jnp

    tree: dict = {}
    for name, tensor in state_dict.items():
        if tie_embeddings and name == "head.weight":
            continue  # the JAX model reads the embedding table for a tied head
        _insert(tree, name.split("."), jnp.asarray(tensor.detach().cpu().numpy()))
    return _lists(tree)


def jax_to_torch(params: dict, *, tie_embeddings: bool = False) -> dict:
    """The JAX pytree -> a torch state dict (CPU tensors), loadable with ``load_state_dict``."""
    import numpy as np
    import torch

    state = {}
    for path, leaf in _flatten(params, ()):
        state[".".join(path)] = torch.from_numpy(np.array(leaf))
    if tie_embeddings:
        state["head.weight"] = state["embed.weight"]
    return state


def _insert(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _lists(tree):
    """Dicts whose keys are 0..n-1 become lists (torch's ModuleList / ParameterList)."""
    if not isinstance(tree, dict):
        return tree
    converted = {key: _lists(value) for key, value in tree.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[str(i)] for i in range(len(converted))]
    return converted


def _flatten(tree, prefix: tuple[str, ...]):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, (*prefix, key))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from _flatten(value, (*prefix, str(index)))
    else:
        yield prefix, tree
