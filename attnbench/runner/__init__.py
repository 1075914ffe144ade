"""The harness: suites expand into cases, each case runs in a fresh worker process, and every
result (ok or not) lands in the run's store. See :mod:`attnbench.runner.run`."""
