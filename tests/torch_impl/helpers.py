"""Small shared pieces of the torch tests."""

import torch


def ff_params_numpy(ff) -> dict:
    """A torch FeedForward's parameters in the reference's naming and layout."""
    def np64(t):
        return t.detach().cpu().double().numpy()

    return {"ln_gamma": np64(ff.norm.weight), "ln_beta": np64(ff.norm.bias),
            "w1": np64(ff.w1.weight).T, "b1": np64(ff.w1.bias),
            "w2": np64(ff.w2.weight).T, "b2": np64(ff.w2.bias)}


class SavedBytes:
    """Counts the bytes autograd saves for backward while active (deterministic on CPU).

    Tensors saved more than once (the same storage) are counted once.
    """

    def __init__(self):
        self.total = 0
        self._seen = set()

    def _pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in self._seen:
            self._seen.add(key)
            self.total += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
