"""The ``attnbench`` command.

  run         run a suite (each case in a fresh process; resumable): attnbench run quickstart
  list        the variants and the shipped suites
  env         the environment a run would record (versions, CPU, GPU, commit), as JSON
  export      a run's results as CSV
  report      HTML + CSV report of one or more runs
  compare     compare two runs case by case; non-zero exit on a regression
  check       evaluate a run's same-run contracts; non-zero exit on a violation
  kernels     compile the fused GPU kernels for a GPU target (no GPU needed): registers, spills
  history     add runs to the performance history; find and confirm steps over commits
  publish     the history as a static site
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

import attnbench

# command -> (module, help); each module has add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "run": ("attnbench.runner.command", "run a suite"),
    "list": ("attnbench.cli", "list variants and shipped suites"),
    "env": ("attnbench.cli", "print the environment as JSON"),
    "export": ("attnbench.cli", "write a run's results as CSV"),
    "report": ("attnbench.report.command", "HTML and CSV report of runs"),
    "compare": ("attnbench.compare", "compare two runs"),
    "check": ("attnbench.contracts", "check a run's same-run contracts"),
    "kernels": ("attnbench.kernels.command", "compile the fused kernels for a GPU target"),
    "history": ("attnbench.history.command", "the performance history over commits"),
    "publish": ("attnbench.history.publish_command", "the history as a static site"),
}


def _list(args) -> int:
    from attnbench.runner.command import shipped_suites
    from attnbench.variants import describe

    print("variants:\n")
    print(describe())
    print("\nsuites (attnbench run NAME):\n")
    for name, description in shipped_suites():
        print(f"  {name:<18} {description}")
    return 0


def _env_arguments(p):
    p.add_argument("--no-frameworks", action="store_true",
                   help="skip the torch/jax probe (a subprocess importing both)")


def _env(args) -> int:
    from attnbench.measure.environment import capture

    print(json.dumps(capture(probe_frameworks=not args.no_frameworks).to_dict(), indent=2))
    return 0


def _export_arguments(p):
    p.add_argument("run_dir", help="a run directory (reports/runs/<run>)")
    p.add_argument("--csv", required=True, help="output CSV path")


def _export(args) -> int:
    from attnbench.runs import SourceError, load_source, unreadable_summary, write_results_csv
    from attnbench.safeio import UnsafePathError, check_outputs

    try:
        source = load_source(args.run_dir)
        check_outputs([("--csv", args.csv)], [args.run_dir], own_files=("results.csv",))
    except (SourceError, UnsafePathError) as exc:
        print(f"attnbench export: error: {exc}", file=sys.stderr)
        return 2
    for line in unreadable_summary([source]):
        print(f"attnbench export: warning: {line} (left out of the CSV)", file=sys.stderr)
    try:
        n = write_results_csv([source], args.csv)
    except OSError as exc:
        print(f"attnbench export: error: cannot write {args.csv}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    print(f"{n} row(s) -> {args.csv}", file=sys.stderr)
    return 0


# command -> (add_arguments or None, run) for the commands this module implements.
_LOCAL = {"list": (None, _list), "env": (_env_arguments, _env),
          "export": (_export_arguments, _export)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=attnbench.__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in _LOCAL:
            if _LOCAL[name][0] is not None:
                _LOCAL[name][0](p)
        else:
            try:
                importlib.import_module(module).add_arguments(p)
            except ImportError as exc:  # a subcommand still being built, or a missing extra
                p.set_defaults(_unavailable=f"{name}: {exc}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a path the locale cannot encode is escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"attnbench: error: {args._unavailable}", file=sys.stderr)
        return 2
    command = (_LOCAL[args.command][1] if args.command in _LOCAL
               else importlib.import_module(COMMANDS[args.command][0]).run)
    try:
        return command(args)
    except OSError as exc:
        # what the system refused on a path (a name too long, a permission, a full disk)
        # is an error naming it, never a traceback; every command's own writes are atomic
        # and its rows fsynced, so nothing written before is lost
        where = " -> ".join(os.fsdecode(f) for f in (exc.filename, exc.filename2)
                            if f is not None)
        print(f"attnbench {args.command}: error: {where + ': ' if where else ''}"
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
