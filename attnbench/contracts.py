"""``attnbench check RUN``: evaluate a run's same-run ratio contracts (:mod:`attnbench.ratios`).

Exit status: 0 every contract holds, 1 one is violated or cannot be evaluated, or the suite
states none (nothing was checked is not a pass: a CI gate whose contracts disappeared must
fail; ``--allow-no-contracts`` accepts it), 2 an input that is not a run.
"""

from __future__ import annotations

import argparse
import sys

from attnbench.ratios import evaluate_contracts
from attnbench.runs import load_source, unreadable_summary
from attnbench.text import plain_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Evaluate the same-run ratio contracts of a run's suite; exit 1 "
                          "when one is violated or cannot be evaluated, or when the suite "
                          "states none.")
    parser.add_argument("run", help="run directory (reports/runs/<run>)")
    parser.add_argument("--allow-no-contracts", action="store_true",
                        help="exit 0 when the run's suite states no contracts")


def run(args: argparse.Namespace) -> int:
    try:
        source = load_source(args.run)
    except ValueError as exc:
        print(f"attnbench check: error: {exc}", file=sys.stderr)
        return 2
    unreadable = unreadable_summary([source])
    if unreadable:  # a contract judged without a row it needs would not be a pass
        for line in unreadable:
            print(f"attnbench check: error: {line}", file=sys.stderr)
        return 2
    contracts = source.contracts
    if not contracts:
        print(f"{source.run_id}: suite {source.suite.name!r} states no contracts: nothing was "
              "checked" + ("" if args.allow_no_contracts else
                           " (--allow-no-contracts to accept that)"),
              file=sys.stderr)
        return 0 if args.allow_no_contracts else 1
    results = evaluate_contracts(source.rows, contracts)
    for result in results:
        print(plain_text(f"{'PASS' if result.passed else 'FAIL'}  {result.name}: "
                         f"{result.message}"))
    failed = sum(not r.passed for r in results)
    print(plain_text(f"{source.run_id}: {len(results) - failed} passed, {failed} failed"))
    return 1 if failed else 0
