"""Performance history: every run on a timeline of commits (``attnbench history``,
``attnbench publish``).

- :mod:`.model`: the dataclasses every part shares (a series, its points, a step);
- :mod:`.db`: the SQLite file (``reports/history.sqlite``), written by ``history add`` and
  rebuildable from the run directories, which stay the source of truth;
- :mod:`.steps`: change detection on one series, weighted by each point's uncertainty;
- :mod:`.confirm`: a suspected step measured again at its two commits, interleaved;
- :mod:`.publish`: the static site;
- :mod:`.command`: the command line.
"""
