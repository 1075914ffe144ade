"""``attnbench run SUITE``: expand a suite, run what is not done yet, write the CSV.

The run directory (``--out``, default ``reports/runs/<suite>`` or
``reports/runs/<suite>-<device>`` with ``--device``) holds the store; running the same
command again resumes it. A directory holding a different version of the suite is refused
(``--fresh`` moves it aside and starts over).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import re
import sys
from pathlib import Path

from attnbench.runner.case import FRAMEWORKS
from attnbench.runner.suite import MAX_CASES, Suite, SuiteError, filter_cases, load_suite
from attnbench.safeio import UnsafePathError, cannot_create_in
from attnbench.store import RunStore, StoreError

DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")

SUITES_DIR = Path(__file__).resolve().parents[2] / "suites"


def resolve_suite_path(ref: str) -> Path:
    """A path, or the name of a shipped suite (``quickstart`` -> ``suites/quickstart.toml``)."""
    path = Path(ref)
    if path.is_file():
        return path
    for folder in (Path("suites"), SUITES_DIR):
        candidate = folder / f"{ref}.toml"
        if candidate.is_file():
            return candidate
    return path  # load_suite reports it missing, naming the path


def shipped_suites() -> list[tuple[str, str]]:
    """(name, first line of the description) of every suite in ``suites/``, read as TOML
    without loading the suite: listing runs no plugin code."""
    import tomllib

    out = []
    for path in sorted(SUITES_DIR.glob("*.toml")):
        try:
            description = str(tomllib.loads(path.read_text(encoding="utf-8"))
                              .get("description", "")).strip()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            description = f"INVALID: {exc}"
        out.append((path.stem, description.splitlines()[0] if description else ""))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="a suite file, or the name of a shipped suite (attnbench list)")
    p.add_argument("--out", help="run directory (default: reports/runs/<suite>[-<device>])")
    p.add_argument("--device", help="run every case on this device instead of the suite's "
                   "(cpu, cuda, cuda:N)")
    p.add_argument("--framework", action="append", choices=FRAMEWORKS,
                   help="only this framework's cases (repeatable)")
    p.add_argument("--filter", action="append", metavar="TEXT",
                   help="only cases whose label contains TEXT, e.g. 'lsh/torch' or 'L=4096' "
                   "(repeatable: all must match; see --dry-run for labels)")
    p.add_argument("--cases-of", metavar="SUITE",
                   help="only the cases that SUITE (a suite file or a shipped suite's name) "
                   "also has, paired by case id; each of SUITE's cases must be one of this "
                   "suite's. The run directory stays this suite's, so a later run without "
                   "--cases-of resumes it and does not run those cases again")
    p.add_argument("--memory-limit", type=int, metavar="MB",
                   help="kill a case whose resident memory passes MB and record it as oom "
                   "(overrides the suite's memory_limit_mb)")
    p.add_argument("--timeout", type=float, metavar="S", help="per-case timeout in seconds "
                   "(overrides the suite's timeout_s)")
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    p.add_argument("--max-cases", type=int, default=MAX_CASES, metavar="N",
                   help="refuse a suite that expands to more cases (default %(default)s)")
    p.add_argument("--fresh", action="store_true",
                   help="move an existing run directory aside and start over")
    p.add_argument("--retry", type=_statuses, default=(), metavar="STATUS[,STATUS]",
                   help="also run again the cases whose last row has one of these statuses "
                   "(timeout, error, oom, skipped); the new row supersedes the old")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one case at a time in a worker process here (default); ray: "
                   "each case a Ray task (needs attnbench[ray])")
    p.add_argument("--address", metavar="ADDRESS",
                   help="with --executor ray: the cluster to join (default: RAY_ADDRESS, else "
                   "a local Ray started for this run)")
    p.add_argument("--cpu-cases-per-node", type=int, default=1, metavar="N",
                   help="with --executor ray: CPU cases timed at once on one node (default 1: "
                   "timings on shared cores measure the neighbours); each row records it")
    p.add_argument("--cold", action="store_true",
                   help="start every case in a fresh interpreter (the reference behaviour) "
                   "instead of forking it from a warm template that has imported the framework")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--compile-cache", metavar="DIR",
                       help="persistent compile cache for JAX and Triton (default: "
                       "$XDG_CACHE_HOME/attnbench/compile, i.e. ~/.cache/attnbench/compile)")
    cache.add_argument("--no-compile-cache", action="store_true",
                       help="compile everything afresh (each row still records compile_cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _statuses(text: str) -> tuple[str, ...]:
    from attnbench.store import STATUSES

    wanted = tuple(t.strip() for t in text.split(",") if t.strip())
    allowed = [s for s in STATUSES if s != "ok"]
    bad = [t for t in wanted if t not in allowed]
    if bad or not wanted:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of "
                                         f"{', '.join(allowed)}")
    return wanted


def _cases(suite: Suite, args) -> tuple[list, list]:
    import dataclasses

    device = args.device
    if device is not None and not DEVICE.fullmatch(device):
        raise SuiteError(f"--device {device!r}: must be cpu, cuda or cuda:N (N a device index)")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise SuiteError(f"--timeout {args.timeout!r}: must be a positive, finite number of "
                         "seconds")
    if args.cpu_cases_per_node < 1:
        raise SuiteError(f"--cpu-cases-per-node {args.cpu_cases_per_node!r}: must be an "
                         "integer >= 1")
    if args.executor != "ray" and (args.address or args.cpu_cases_per_node != 1):
        raise SuiteError("--address and --cpu-cases-per-node go with --executor ray")
    if args.memory_limit is not None and args.memory_limit < 1:
        raise SuiteError(f"--memory-limit {args.memory_limit!r}: must be an integer >= 1 (MiB; "
                         "leave it out for no limit)")
    everything = filter_cases(suite.cases, device=device)
    overrides = {}
    if args.memory_limit is not None:
        overrides["memory_limit_mb"] = args.memory_limit
    if args.timeout is not None:
        overrides["timeout_s"] = args.timeout
    if overrides:
        everything = [dataclasses.replace(c, **overrides) for c in everything]
    selected = filter_cases(everything, frameworks=args.framework, patterns=args.filter)
    if args.cases_of is not None:
        selected = _cases_of(args.cases_of, suite, everything, selected, device)
    return everything, selected


def _cases_of(ref: str, suite: Suite, everything, selected, device) -> list:
    """--cases-of: the selected cases that the other suite also has (by case id, after the
    same --device); an other-suite case this suite lacks is an error, never dropped quietly."""
    other = load_suite(resolve_suite_path(ref))
    ours = {c.case_id for c in everything}
    wanted = set()
    for case in filter_cases(other.cases, device=device):
        if case.case_id not in ours:
            raise SuiteError(f"--cases-of {ref}: case {case.case_id} ({case.label()}) of suite "
                             f"{other.name!r} is not in suite {suite.name!r}; --cases-of "
                             "selects among this suite's cases")
        wanted.add(case.case_id)
    return [c for c in selected if c.case_id in wanted]


def run(args: argparse.Namespace) -> int:
    try:
        if args.max_cases < 1:
            raise SuiteError(f"--max-cases {args.max_cases!r}: must be an integer >= 1")
        suite = load_suite(resolve_suite_path(args.suite), max_cases=args.max_cases)
        everything, selected = _cases(suite, args)
    except SuiteError as exc:
        print(f"attnbench run: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for case in selected:
            print(f"{case.case_id}  {case.label()}")
        print(f"{len(selected)} case(s) of {len(everything)} in suite {suite.name!r}",
              file=sys.stderr)
        return 0
    if not selected:
        print("attnbench run: error: the filters select no case (try --dry-run)",
              file=sys.stderr)
        return 2
    cache = _compile_cache(args)
    try:  # before anything starts: a cache that cannot be written would be a miss each time
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"attnbench run: error: --compile-cache {cache}: cannot be a directory "
              f"({exc.strerror or exc}); name another or use --no-compile-cache",
              file=sys.stderr)
        return 2
    unwritable = cache is not None and cannot_create_in(cache)
    if unwritable:
        print(f"attnbench run: error: --compile-cache {cache}: cannot be written "
              f"({unwritable}); every case would compile afresh and record a miss; name "
              "another or use --no-compile-cache", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("reports/runs") / (
        suite.name + (f"-{args.device.replace(':', '')}" if args.device else ""))
    store = RunStore(out)
    digest = _digest(everything)
    ray = None
    if args.executor == "ray":  # before anything starts: Ray missing or unreachable is said now
        from attnbench.runner.ray_executor import RayUnavailable, connect

        try:
            ray = connect(args.address)
        except RayUnavailable as exc:
            print(f"attnbench run: error: {exc}", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as held:
        try:
            if args.fresh and (store.exists() or store.results_path.exists()):
                with store.lock():  # no other runner is using what --fresh moves aside
                    _move_aside(store)
            store.check_usable()
            held.enter_context(store.lock())  # one runner per run directory, for the run
            run_id = _open_run(store, suite, digest, args)
        except StoreError as exc:
            print(f"attnbench run: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"attnbench run: error: cannot use {out} as the run directory: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 2
        return _run_and_export(store, selected, run_id, args, ray)


def _compile_cache(args) -> Path | None:
    from attnbench.runner.compile_cache import default_root

    if args.no_compile_cache:
        return None
    return Path(args.compile_cache).expanduser().resolve() if args.compile_cache \
        else default_root()


def _run_and_export(store: RunStore, selected, run_id: str, args, ray=None) -> int:
    from attnbench.runner.run import run_cases

    out = store.path
    how = "" if ray is None else f" through Ray ({len(ray.nodes())} node(s))"
    print(f"run {run_id}: {len(selected)} case(s){how} -> {out}", file=sys.stderr)
    try:
        with _sigterm_as_interrupt():
            if ray is None:
                counts = run_cases(selected, store, run_id, progress=not args.no_progress,
                                   retry=args.retry, workers=_workers(args),
                                   compile_cache=_compile_cache(args))
            else:
                from attnbench.runner.ray_executor import run_cases_ray

                counts = run_cases_ray(selected, store, run_id, ray=ray,
                                       progress=not args.no_progress, retry=args.retry,
                                       cpu_cases_per_node=args.cpu_cases_per_node,
                                       workers=_workers(args),
                                       compile_cache=_compile_cache(args))
    except (KeyboardInterrupt, Terminated) as stop:
        name = "terminated" if isinstance(stop, Terminated) else "interrupted"
        _, csv_note = _export_csv(out)
        print(f"\n{name}: finished cases are saved in {out} ({csv_note}); run the same "
              "command again to resume", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except (OSError, StoreError) as exc:  # a full disk, a directory gone, a planted link
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"attnbench run: error: cannot write to {out}: {why}; the rows written before "
              "are kept, run the same command again to resume", file=sys.stderr)
        return 2
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing new to run"
    exported, csv_note = _export_csv(out)
    print(f"{summary}; {csv_note}", file=sys.stderr)
    if not exported:
        return 2
    if counts and not counts.get("ok"):
        # every case this command ran failed: a sweep that measured nothing is not a success
        print("attnbench run: no case ran ok (each one's row says why): exit status 1",
              file=sys.stderr)
        return 1
    return 0


def _export_csv(out: Path) -> tuple[bool, str]:
    """Write the run's results.csv; what happened, in words (a full disk is an error said
    here, the rows in results.jsonl stay and the previous CSV is left whole)."""
    from attnbench.runs import SourceError, load_source, write_results_csv

    try:
        n = write_results_csv([load_source(out)], out / "results.csv")
    except (OSError, SourceError, UnsafePathError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return False, (f"error: results.csv could not be written ({why}); every row is in "
                       f"{out / 'results.jsonl'}; attnbench export or report writes the CSV "
                       "later")
    return True, f"{n} row(s) in {out / 'results.jsonl'} and {out / 'results.csv'}"


def _workers(args) -> str:
    return "cold" if args.cold else "warm"


class Terminated(BaseException):
    """SIGTERM arrived: stop as an interrupt does (the worker is killed, the rows kept)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    import signal

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _digest(cases) -> str:
    import hashlib
    import json

    ids = sorted(c.case_id for c in cases)
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]


def unique_stamp(now: dt.datetime) -> str:
    """``20261204-074118-3fa9c02e``: the second, and 32 random bits, so that two runs started in
    the same second (two nodes of a cluster, a script's loop) never share a run id: the
    history would take the second for the first one resumed and replace its points, and
    ``report`` would refuse the pair as one run given twice."""
    import secrets

    return f"{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def _move_aside(store: RunStore) -> None:
    """--fresh: the previous run keeps its rows, under ``<dir>.old-<stamp>``."""
    stamp = unique_stamp(dt.datetime.now())
    aside = store.path.with_name(f"{store.path.name}.old-{stamp}")
    store.path.rename(aside)
    print(f"moved the previous run to {aside}", file=sys.stderr)


def _open_run(store: RunStore, suite: Suite, digest: str, args) -> str:
    """Start the run, or resume it when it holds the same suite; returns the run id."""
    if store.exists():
        meta = store.read_meta()
        if meta.suite.digest != digest:
            raise StoreError(
                f"{store.path} holds a run of a different version of suite "
                f"{meta.suite.name!r} (case set {meta.suite.digest} != {digest}); "
                "use --out for a new directory or --fresh to move the old run aside")
        if list(meta.suite.contracts) != list(suite.contracts):
            # check reads the contracts from meta.json: a resume would keep the old gate
            raise StoreError(
                f"{store.path} holds a run of suite {meta.suite.name!r} with other contracts "
                "than the suite states now; check would judge the old ones: use --fresh to "
                "start over (or --out for a new directory)")
        from attnbench.text import plain_text

        print(f"resuming run {plain_text(meta.run_id)} ({len(store.done_ids())} case(s) done)",
              file=sys.stderr)
        return meta.run_id
    from attnbench.measure.environment import capture
    from attnbench.meta import RunMeta, SuiteInfo

    now = dt.datetime.now(dt.UTC)
    cache = _compile_cache(args)
    run_id = f"{suite.name}-{unique_stamp(now)}"
    store.create(RunMeta(
        run_id=run_id, started_at=now.isoformat(timespec="seconds"), argv=list(sys.argv),
        suite=SuiteInfo(name=suite.name, description=suite.description,
                        path=None if suite.path is None else str(suite.path), digest=digest,
                        n_cases=len(suite.cases), contracts=list(suite.contracts),
                        source=suite.source),
        environment=capture(), workers=_workers(args),
        compile_cache=None if cache is None else str(cache)))
    return run_id
