"""The ``attnbench`` command.

Subcommands (more arrive with the harness: run, report, compare, check, list, env):
  layer-bench   time and memory of one attention layer, forward + backward, LSH vs full
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import attnbench


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="attnbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=attnbench.__version__)
    parser.add_argument("command", choices=["layer-bench"])
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="options of the subcommand (see attnbench <command> --help)")
    ns = parser.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    rest = argv[1:]
    if ns.command == "layer-bench":
        from attnbench import layer_bench

        return layer_bench.main(rest)
    parser.error(f"unknown command {ns.command!r}")  # pragma: no cover - argparse checks
    return 2


if __name__ == "__main__":
    sys.exit(main())
