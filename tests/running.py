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


def close(a, b, atol=1e-5):
    """Same keys, values within `atol` (float32 rounding between the engines)."""
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def assert_engines_agree(ref, vec, atol=1e-5):
    """Two runs of one algorithm on the reference and vectorized engines: the same server state, client states,
    sampled clients and bytes within float rounding, and accuracies within one test sample per client."""
    assert close(ref.server.params, vec.server.params, atol)
    assert close(ref.server.extra, vec.server.extra, atol)
    assert ref.states.keys() == vec.states.keys()
    for c in ref.states:
        assert close(ref.states[c].params, vec.states[c].params, atol) and close(ref.states[c].extra,
                                                                                vec.states[c].extra, atol)
    for e_ref, e_vec in zip(ref.evaluations, vec.evaluations, strict=True):
        for a, b, n in zip(e_ref.per_client_acc, e_vec.per_client_acc, e_ref.test_sizes):
            assert abs(a - b) * n <= 1 + 1e-9
    assert ref.ledger.up == vec.ledger.up and ref.ledger.down == vec.ledger.down
    assert ref.sampled == vec.sampled


TIMINGS = ("wall_seconds", "seconds_to_target", "train_seconds")  # the only summary.json fields that may differ


def strip_timings(obj):
    """A summary.json tree without its timings (two runs of one config and seed must agree on the rest)."""
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj
