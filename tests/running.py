"""The round loop as most tests drive it: `run(algo, task, data, rounds=.., clients_per_round=.., eval_every=..,
seed=.., engine="reference")` builds the `RunSpec`, the in-process runtime and the hooks of
`fedarena.sim.engine.run_algorithm`."""

from fedarena.sim.engine import Hooks, RunSpec, run_algorithm
from fedarena.sim.local import local_runtime


def run_loop(algo, task, data, *, engine="reference", runtime=None, privacy=None, dpsgd=None, resume=None, initial=None,
        on_round=None, on_start=None, record=None, new_clients=(), exclude=(), **spec):
    return run_algorithm(algo, task, data, RunSpec(new_clients=tuple(new_clients), exclude=tuple(exclude), **spec),
                         runtime or local_runtime(engine), privacy=privacy, dpsgd=dpsgd, resume=resume,
                         hooks=Hooks(on_start=on_start, record=record, on_round=on_round), initial=initial)
