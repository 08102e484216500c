"""fedarena as an NVFlare 2.9 job: the code a job written by `fedarena export nvflare` runs (docs/nvflare.md).

- :mod:`fedarena.nvflare_job.common`: what the job's server and clients agree on (task names, meta keys, how
  params travel as named numpy arrays, the client's state file, which algorithms fit), without NVFlare;
- :mod:`fedarena.nvflare_job.controller`: the server's workflow, a ModelController that runs fedarena's round
  loop (`sim.engine.run_algorithm`: sampling, the algorithm's `aggregate`) with the clients' work on the sites;
- :mod:`fedarena.nvflare_job.client`: the sites' Client API loop, calling fedarena's client functions
  (`sim.runtime.train_client`, `personal_model`, `evaluate_client`).

Only this package imports NVFlare (`.importlinter`), and only `controller` and `client` do.
"""
