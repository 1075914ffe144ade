"""Persistent compile caches, configured in the worker before its case compiles anything.

The runner names the cache's root in ``ATTNBENCH_COMPILE_CACHE`` (default
:func:`default_root`, stated in the run's ``meta.json``; unset with ``--no-compile-cache``).
Under it, JAX keeps its persistent compilation cache (``jax/``) and Triton its kernel cache
(``triton/``), so a resume, a repeated run or the same shapes in another case load compiled
code instead of compiling it again. Compile time is still recorded (``compile_s`` and
``warmup_s``) together with where the code came from:

- ``compile_cache``: ``hit`` (every compilation the case asked for was in the cache),
  ``miss`` (none was), ``partial``, ``off``, or ``unwritable`` (the directory cannot take
  an entry: ``compile_cache_error`` says why, and the case compiles without the cache);
  absent for a case that compiles nothing (torch without a Triton kernel);
- JAX: ``compile_cache_requests`` and ``compile_cache_hits``, counted from JAX's own
  monitoring events; every compilation is cached (no minimum compile time);
- Triton: ``compile_cache_new_entries``, the kernel directories the case added.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "ATTNBENCH_COMPILE_CACHE"
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_HIT = "/jax/compilation_cache/cache_hits"


def default_root() -> Path:
    """``$XDG_CACHE_HOME/attnbench/compile`` (``~/.cache/attnbench/compile``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnbench" / "compile"


def _verdict(requests: int, hits: int) -> str:
    return "hit" if hits == requests else "miss" if hits == 0 else "partial"


class _Off:
    def __init__(self, compiles: bool) -> None:
        self.compiles = compiles

    def result(self) -> dict:
        return {"compile_cache": "off"} if self.compiles else {}


class _Jax:
    SUBDIR = "jax"

    def __init__(self, root: Path) -> None:
        import jax
        from jax import monitoring

        self.dir = root / self.SUBDIR
        jax.config.update("jax_compilation_cache_dir", str(self.dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        self.requests = self.hits = 0
        monitoring.register_event_listener(self._event)

    def _event(self, event: str, **kwargs) -> None:
        if event == _REQUEST:
            self.requests += 1
        elif event == _HIT:
            self.hits += 1

    def result(self) -> dict:
        if not self.requests:  # the backend does not cache (or nothing compiled)
            return {"compile_cache": "off", "compile_cache_dir": str(self.dir),
                    "compile_cache_requests": 0, "compile_cache_hits": 0}
        return {"compile_cache": _verdict(self.requests, self.hits),
                "compile_cache_dir": str(self.dir), "compile_cache_requests": self.requests,
                "compile_cache_hits": self.hits}


class _Triton:
    SUBDIR = "triton"

    def __init__(self, root: Path) -> None:
        self.dir = root / self.SUBDIR
        os.environ["TRITON_CACHE_DIR"] = str(self.dir)  # read by Triton when it compiles
        self.before = self._entries()

    def _entries(self) -> set[str]:
        try:
            return {p.name for p in self.dir.iterdir()}
        except OSError:
            return set()

    def result(self) -> dict:
        added = len(self._entries() - self.before)
        return {"compile_cache": "miss" if added else "hit", "compile_cache_dir": str(self.dir),
                "compile_cache_new_entries": added}


def configure(case):
    """Point the case's framework at the cache (before anything compiles); the returned
    object's ``result()`` gives the metrics above once the case has run."""
    triton = case.framework == "torch" and case.resolved_kernel == "triton"
    compiles = case.framework == "jax" or triton
    root = os.environ.get(ENV)
    if not root or not compiles:
        return _Off(compiles)
    cls = _Jax if case.framework == "jax" else _Triton
    why = _unwritable(Path(root), cls.SUBDIR)
    if why:
        return _Unwritable(Path(root) / cls.SUBDIR, why)
    return cls(Path(root))


def _unwritable(root: Path, subdir: str) -> str | None:
    """Why the framework's cache directory cannot take a new entry (None when it can)."""
    from attnbench.safeio import cannot_create_in

    try:
        (root / subdir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    return cannot_create_in(root / subdir)


class _Unwritable:
    """A cache that cannot be written: said in the row (``compile_cache: unwritable`` and
    why), never recorded as an ordinary miss; the case compiles without it."""

    def __init__(self, directory: Path, why: str) -> None:
        self.directory, self.why = directory, why

    def result(self) -> dict:
        return {"compile_cache": "unwritable", "compile_cache_dir": str(self.directory),
                "compile_cache_error": f"cannot write {self.directory}: {self.why}"}
