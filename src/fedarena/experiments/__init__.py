"""The experiment layer: the only code that runs whole comparisons.

- :mod:`~fedarena.experiments.rundir`: the run directory (check the output directory, write it atomically:
  config.toml, metrics.parquet, summary.json, models/, forget/).
- :mod:`~fedarena.experiments.summary`: summary.json from trained runs (target rule, per-run blocks).
- :mod:`~fedarena.experiments.compare`: the one entry point, :func:`~fedarena.experiments.compare.run_experiment`,
  that trains every configured (algorithm, seed) on a :class:`~fedarena.experiments.compare.Platform` (this
  process's engines, or Flower's SuperNodes) and writes the run directory; ``run_compare`` is `fedarena compare`.
- :mod:`~fedarena.experiments.flower_server`: the Flower ServerApp of `fedarena deploy` and ``--engine flower-sim``,
  which runs the same entry point on the nodes.
- ``continuation`` (`fedarena continue`), ``forget`` (`fedarena forget`), ``sweep`` and ``privacy_sweep``
  (`fedarena sweep`), ``bench`` (`fedarena bench``).

Nothing is imported here, so that a SuperNode's ClientApp, which imports no part of this package, stays light.
"""
