"""The report: result rows -> a tidy table (CSV), tables and seaborn figures -> one HTML file.

``attnbench report RUN [RUN ...]`` (:mod:`attnbench.report.command`), on the run model
:mod:`attnbench.runs` (reading runs, labels, results.csv). Modules, one concern each:
``frame`` (the tidy pandas table), ``derive`` (speed-ups, largest length that fits, scaling
exponents), ``figures`` (seaborn), ``pattern`` (the attention-pattern figure from the NumPy
reference), ``tables``, ``html`` (escaping and the page), ``paper`` (published numbers drawn
beside ours).
pandas, seaborn and matplotlib are imported only when a report is built.
"""
