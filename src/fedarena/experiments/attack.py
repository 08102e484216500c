"""A comparison under attack and with a robust server step: the glue between the config's `[attack]` and `[robust]`
sections, the round loop's `poison` and `combine` hooks (sim/engine.py), and summary.json.

- Which clients are malicious is drawn per seed from that seed's training clients (sim/attacks.malicious_clients);
  their training data is poisoned once, when the seed's clients are prepared (label-flip, backdoor, scale), and their
  uploads every round (sign-flip, scale, gaussian, alie). They train but are never evaluated: every accuracy of the
  run is over the benign clients.
- The robust rule (core/robust.py) replaces the weighted mean for algorithms whose server step is one
  (`server_step` in MEAN_STEPS; config/robust.py refuses the others): the round's uploads are handed to the
  algorithm's `aggregate` as one upload holding the rule's result with their summed weight, exactly as the private
  round hands it DP-FedAvg's noised mean, so server optimizers compose with it.
- Attack success (backdoor and scale, targeted attacks): the share of the benign clients' triggered test samples
  (true label not the target) that their final personal models assign to the target (data/backdoor.py); the
  untargeted attacks' damage is the benign accuracy itself.
"""

from __future__ import annotations

from typing import Any

import torch

from fedarena import config as cfg
from fedarena.config.robust import rule
from fedarena.core import robust
from fedarena.core.types import Broadcast, FedarenaError, FederatedData, ServerState, Upload
from fedarena.data.backdoor import add_trigger, trigger_value
from fedarena.sim import attacks
from fedarena.sim.engine import AlgorithmRun, Combine, Poison
from fedarena.sim.runtime import personal_model
from fedarena.tasks import Task

TARGETED = ("backdoor", "scale")  # attacks whose success is measured (a backdoor's target label)


def choose(config: cfg.Config, data: FederatedData, new_clients: list[int]) -> tuple[FederatedData, list[int]]:
    """The seed's clients with the malicious ones' data poisoned, and the malicious clients (none without attack)."""
    if not config.attack.on:
        return data, []
    training = [c for c in range(data.num_clients) if c not in set(new_clients)]
    bad = attacks.malicious_clients(config.run.seed, training, config.attack.malicious)
    return attacks.poison_data(config.attack.attack(), data, bad, config.run.seed), bad


def poison(config: cfg.Config, malicious: list[int]) -> Poison | None:
    """The round loop's `poison`: the malicious clients' uploads replaced as the attack says (None: no attack)."""
    if not config.attack.on or not malicious:
        return None
    attack, seed, bad = config.attack.attack(), config.run.seed, set(malicious)

    def apply(rnd: int, uploads: dict[int, Upload], broadcasts: dict[int, Broadcast]) -> dict[int, Upload]:
        return attacks.poison_uploads(attack, rnd, seed, uploads, {c: b.params for c, b in broadcasts.items()}, bad)

    return apply


def combine(config: cfg.Config, algo: Any) -> Combine | None:
    """The round loop's `combine`: the robust rule's result as one upload (None: the plain mean, or an algorithm with
    nothing to aggregate)."""
    if not config.robust.on or not algo.communicates:
        return None
    r = rule(config)

    def apply(server: ServerState, uploads: dict[int, Upload]) -> dict[int, Upload]:
        shared = {c: u for c, u in uploads.items() if u.params}
        if not shared:
            return uploads
        robust.check(r, len(shared))  # a round may have fewer replies than clients_per_round (a deployment's)
        params = [u.params for u in shared.values()]
        missing = sorted(set(params[0]) - set(server.params))
        if missing:
            raise FedarenaError(f"robust.aggregator={r.name}: {algo.name} uploads keys its server does not hold "
                                f"({', '.join(missing[:3])}), so there is no broadcast model to centre on")
        center = {k: server.params[k] for k in params[0]}
        mean = robust.aggregate(r, params, [u.num_samples for u in shared.values()], center)
        return {min(shared): Upload(params=mean, num_samples=sum(u.num_samples for u in shared.values()))}

    return apply


def success(config: cfg.Config, algo: Any, task: Task, data: FederatedData, run: AlgorithmRun) -> float | None:
    """A targeted attack's success on the benign clients' final personal models (None: untargeted, no attack, no
    full model, or a diverged run, whose accuracy is 0)."""
    if config.attack.kind not in TARGETED or run.server is None or run.diverged is not None or not run.evaluations:
        return None
    final, target, value = run.evaluations[-1], config.attack.target, trigger_value(data)
    hits = eligible = 0
    for c in final.clients:
        d = data.client(c)
        keep = d.y_test != target
        if not bool(keep.any()):
            continue
        state = run.states.get(0 if not algo.federated else c)
        if state is None:
            continue
        model = personal_model(algo, task, algo.broadcast(run.server, c), state, d, config.run.seed, final.round, c)
        with torch.no_grad():
            predicted = task.forward(model, add_trigger(d.x_test[keep], value)).argmax(dim=1)
        hits += int((predicted == target).sum())
        eligible += int(keep.sum())
    return hits / eligible if eligible else None
