"""Warm workers: one template process per framework forks a fresh child for every case.

A cold worker (``python -m attnbench.runner.worker``) spends most of a small case starting
Python and importing the framework. A template, ``python -m attnbench.runner.warm FRAMEWORK``,
imports the framework and attnbench's modules for it once and starts nothing else: no device
context (checked: a template that finds CUDA or an XLA backend initialised after its imports
refuses to start), no framework thread pool, no compilation. For each case it forks a child,
which is as isolated as a cold worker: its own address space (so its own memory, peak and
baseline), its own process group (the runner kills the group on a timeout or memory limit),
``PR_SET_PDEATHSIG`` tied to the template, which has it tied to the runner (a killed runner
takes both with it), and its stdout and stderr in the runner's files. The child then runs
exactly what a cold worker runs (:func:`attnbench.runner.worker.run_and_print`): it pins its
CPUs, sets the framework's threads, creates its own device context and XLA backend.

JAX may be forked at this point: it is multithreaded only once a backend exists (JAX itself
warns on a fork after that, never before), and the template never creates one.

The protocol is JSON lines: the template writes ``{"ready": ...}`` once its imports are done;
the runner writes ``{"case", "out", "err", "env"}``; the template answers ``{"pid"}`` once the
child is forked and ``{"pid", "exit"}`` (a Popen-style return code: negative for a signal) once
it has ended. The runner's side is :class:`Templates`, which
:class:`attnbench.runner.run.WarmLauncher` uses; every row records ``worker`` (``warm`` or
``cold``), and ``attnbench run --cold`` runs cold workers instead, the reference behaviour.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

# What a template imports: the framework and every attnbench module a case of it may load.
PRELOAD = {
    # torch.optim's first step imports torch._dynamo (1.2 s here): a train-step would pay it
    "torch": ("torch", "torch._dynamo", "attnbench.torch_impl.bench",
              "attnbench.torch_impl.approximation", "attnbench.torch_impl.train"),
    "jax": ("jax", "jax.numpy", "optax", "attnbench.jax_impl.bench",
            "attnbench.jax_impl.approximation", "attnbench.jax_impl.train"),
}
COMMON = ("attnbench.runner.worker", "attnbench.runner.accuracy_modes",
          "attnbench.measure.machine", "attnbench.measure.work")
START_TIMEOUT_S = 300.0   # the imports of a template (seconds, on a busy machine)
EXIT_TIMEOUT_S = 30.0     # from killing a child to the template reporting it


class TemplateError(RuntimeError):
    """The template could not start, or died: the case it was to run is an ``error`` row."""


# -- the template process ----------------------------------------------------------------------

def _untouched_devices(framework: str) -> str | None:
    """Why the template may not fork (a device context or XLA backend exists), or None."""
    if framework == "torch":
        import torch

        return "torch initialised CUDA" if torch.cuda.is_initialized() else None
    from jax._src import xla_bridge

    return "JAX initialised a backend" if xla_bridge._backends else None


PAGE = os.sysconf("SC_PAGE_SIZE")
_MADV_POPULATE_READ = 22  # Linux 5.14


def resident_file_pages() -> list[tuple[int, int]]:
    """The (address, length) runs of this process's file-backed pages that are mapped now.

    ``fork`` does not copy the page-table entries of file mappings without private copies
    (library code and read-only data): the child faults them in again as it touches them, and
    each fault raises its resident set. Left alone, code the imports had already touched would
    count towards a warm case's peak but not a cold one's (measured: 3-5 MB more on the smoke
    cases); the child maps these runs again before it measures (:func:`populate`)."""
    runs: list[tuple[int, int]] = []
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if not path.startswith("/") or path.startswith("/dev/") or "(deleted)" in path:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            entries = memoryview(pagemap.read((end - start) // PAGE * 8)).cast("Q")
            run_start = None
            for i, entry in enumerate(entries):
                present = entry >> 63
                if present and run_start is None:
                    run_start = i
                elif not present and run_start is not None:
                    runs.append((start + run_start * PAGE, (i - run_start) * PAGE))
                    run_start = None
            if run_start is not None:
                runs.append((start + run_start * PAGE, (len(entries) - run_start) * PAGE))
    return runs


def populate(runs: list[tuple[int, int]]) -> str | None:
    """Map ``runs`` into this process's page tables (``MADV_POPULATE_READ``); why not, or None."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for address, length in runs:
        if libc.madvise(address, length, _MADV_POPULATE_READ) != 0:
            errno = ctypes.get_errno()
            return f"madvise(MADV_POPULATE_READ) failed: {os.strerror(errno)}"
    return None


def _child(request: dict, template: int, resident: list[tuple[int, int]]) -> int:
    """In the forked child: the runner's files as stdout/stderr, its variables, the template's
    resident pages mapped again, then the case."""
    for path, fd in ((request["out"], 1), (request["err"], 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    for name, value in request["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    from attnbench.runner import worker

    worker.die_with_parent(template)
    refused = populate(resident)
    if refused:  # the peak would include re-faulted library pages: say so, do not measure
        print(f"the warm worker cannot map the template's resident pages ({refused}); "
              "run with --cold", file=sys.stderr)
        return 3
    return worker.run_and_print(json.dumps(request["case"]))


def serve(framework: str) -> int:
    from attnbench.runner import worker

    worker.die_with_parent(worker.runner_pid())
    # The protocol keeps the pipes; fds 0 and 1 become /dev/null and stderr, so nothing a
    # library prints can corrupt it, and no child inherits them.
    inbox = os.fdopen(os.dup(0), "rb")
    outbox = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)

    def send(message: dict) -> None:
        os.write(outbox, (json.dumps(message) + "\n").encode())

    t0 = time.perf_counter()
    for name in PRELOAD[framework] + COMMON:
        importlib.import_module(name)
    refused = _untouched_devices(framework)
    if refused:
        send({"ready": False, "error": f"the {framework} template cannot fork: {refused} "
              "while importing"})
        return 1
    resident = resident_file_pages()
    send({"ready": True, "pid": os.getpid(), "import_s": time.perf_counter() - t0})
    for line in inbox:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into this loop
            code = 1
            try:
                os.setpgid(0, 0)
                inbox.close()
                os.close(outbox)
                os.close(devnull)
                code = _child(request, os.getppid(), resident)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        try:
            os.setpgid(pid, pid)  # also here: the group exists before the runner may kill it
        except OSError:
            pass  # the child has already made it, or ended
        send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        send({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
    return 0


# -- the runner's side -------------------------------------------------------------------------

def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a worker or a template and what it started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Lines:
    """JSON lines from a pipe, read with a timeout (``select``)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.closed = fd, b"", False

    def read(self, timeout_s: float) -> dict | None:
        """The next message; None if none came within ``timeout_s``; TemplateError at EOF."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            if self.closed:
                raise TemplateError("the template process closed its pipe (it died)")
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            self.closed = not chunk
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


class Template:
    """One running template process (the runner's handle)."""

    def __init__(self, python: str, framework: str, env: dict[str, str], log: Path) -> None:
        self.framework, self.env, self.log = framework, env, log
        t0 = time.perf_counter()
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [python, "-m", "attnbench.runner.warm", framework], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
        self.lines = _Lines(self.proc.stdout.fileno())
        try:
            ready = self.lines.read(START_TIMEOUT_S)
        except TemplateError:
            ready = {"ready": False, "error": f"the {framework} template exited with code "
                     f"{self.proc.wait()}: {self.stderr_tail()}"}
        if ready is None:
            ready = {"ready": False, "error": f"the {framework} template did not start within "
                     f"{START_TIMEOUT_S:g} s"}
        if not ready.get("ready"):
            self.close()
            raise TemplateError(ready["error"])
        self.start_s = time.perf_counter() - t0

    def stderr_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.lines.closed

    def fork(self, case_dict: dict, env: dict[str, str | None], out: Path,
             err: Path) -> WarmChild:
        """Fork a child for the case; ``env`` sets (or, for None, unsets) its per-case
        variables."""
        request = {"case": case_dict, "out": str(out), "err": str(err), "env": env}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            reply = self.lines.read(START_TIMEOUT_S)
        except (BrokenPipeError, TemplateError):
            reply = None
        if reply is None or "pid" not in reply:
            raise TemplateError(f"the {self.framework} template did not fork the case: "
                                f"{self.stderr_tail()}")
        return WarmChild(self, reply["pid"])

    def close(self) -> None:
        kill_group(self.proc.pid)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class WarmChild:
    """A forked case, with the handle the supervisor uses (``pid``, ``wait``, ``kill``)."""

    def __init__(self, template: Template, pid: int) -> None:
        self.template, self.pid, self.returncode = template, pid, None

    def wait(self, timeout_s: float) -> int | None:
        """The return code once the template reports it; None while it runs."""
        if self.returncode is None:
            try:
                message = self.template.lines.read(timeout_s)
            except TemplateError:
                raise TemplateError(f"the {self.template.framework} template died while the "
                                    f"case ran: {self.template.stderr_tail()}") from None
            if message is not None:
                self.returncode = message["exit"]
        return self.returncode

    def kill(self) -> None:
        kill_group(self.pid)
        try:
            if self.wait(EXIT_TIMEOUT_S) is None:
                self.template.close()  # it cannot report the child: start afresh next case
        except TemplateError:
            pass


class Templates:
    """The runner's templates, one per framework, started on first use and again after one
    dies or when the environment it was started with has changed (variables a framework
    reads at import time would be stale); ``close`` stops them."""

    def __init__(self, python: str, scratch: Path) -> None:
        self.python, self.scratch = python, scratch
        self.templates: dict[str, Template] = {}

    def template(self, framework: str, env: dict[str, str]) -> tuple[Template, float | None]:
        """The framework's live template for ``env``, and its start time if this call
        started it."""
        current = self.templates.get(framework)
        if current is not None and current.alive() and current.env == env:
            return current, None
        if current is not None:
            current.close()
        log = self.scratch / f"template-{framework}.log"
        self.templates[framework] = Template(self.python, framework, env, log)
        return self.templates[framework], self.templates[framework].start_s

    def close(self) -> None:
        for template in self.templates.values():
            template.close()
        self.templates.clear()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PRELOAD:
        sys.exit(f"usage: python -m attnbench.runner.warm {{{','.join(PRELOAD)}}}")
    sys.exit(serve(sys.argv[1]))
