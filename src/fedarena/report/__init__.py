"""The decision report, one module per concern (rules and definitions: docs/report.md):

- ``measures``: numbers per algorithm over seeds, paired differences, the noise rule, `aggregate`;
- ``claims``: the common pFL-vs-global claims beside the measured values, with verdicts;
- ``format``: numbers for people (%, points, sizes, mean ± 95% CI);
- ``recommend``: `fedarena recommend` (personas, priorities, stated rules);
- ``tuning``: which hyperparameters the verdicts rest on (summary.json's tuning label, the chosen values,
  tuning.parquet's trials);
- ``plots``: the plotly figures;
- ``render``: report.html (self-contained) and report.md, sweep.html and sweep.md;
- ``sweep``: `fedarena sweep`, the heterogeneity grid and its crossover.

Nothing is imported here, so that `fedarena.experiments` can use ``measures`` without loading plotly.
"""
