"""The server's private round: who is sampled, and what the server learns of the uploads.

One object per algorithm run (`Privacy.build`), called by the engine at three points:
- `sample`: with DP and `sampling = "poisson"` every client takes part independently with probability
  q = clients_per_round / N, drawn from its own (seed, round, client) key (McMahan et al., ICLR 2018, Alg. 1);
- `rounds_allowed`: with `target_epsilon`, the run stops before the first round that would exceed it
  (`budget.Budget`, which also holds the epsilon, the participations and the DP fields of the summary);
- `aggregate`: replaces the algorithm's server step by what the server may see:
  - central DP (DP-FedAvg, `dp.central_dp_mean`): each update (upload - server params) clipped to L2 norm
    C, summed, N(0, (zC)^2) added, divided by the expected number of clients qN (fixed denominator);
  - local DP (`dp.local_dp`): each client clips and noises its own update before it leaves;
  - secure aggregation (`secagg.run_secagg`): clients send fixed-point encodings of (n_k * update, n_k) / W
    (W = the largest client train size, a public bound) masked so that the server learns only the sum;
    the weighted mean is sum / sum-of-weights, exactly FedAvg's up to the fixed-point resolution.
  The result reaches the algorithm's own `aggregate` as one upload holding the new mean, so every algorithm
  whose server step needs only the weighted mean (`server_step` in `core.algorithm.MEAN_STEPS`: FedAvg's mean,
  the shared part of personalized ones included, or that mean followed by a server optimizer such as FedAdam's)
  works unchanged; others are refused at configuration time (`checks.check`).
Personal keys are never uploaded, so they are neither masked nor noised: they never leave the client.

Where the clients run elsewhere (the Flower deployment), the server must never hold a single update, so the
engine calls `train_and_aggregate`: a runtime with ``protects_updates = True`` gets the round's
`encoding.ClientPrivacy` and its clients apply `client_delta` (local DP) and `encode_update` (SecAgg) to their
own updates with the same functions the simulation uses here; under SecAgg the runtime's `train_secure` returns
only the protocol's `SecAggResult` (the modular sum of the survivors' encodings), which `_secure_result` decodes
as in simulation. A round whose secure aggregation aborts (fewer than t survivors at some stage) leaves the
server state as it was, is logged, and is counted in the summary (`secagg.aborted_rounds`); the clients that
trained in it keep their local state, as any client whose reply is lost does.

Central DP together with SecAgg (the server must not add the noise: it never sees the sum before it is
unmasked, and trusting it to add noise afterwards is the trusted-server model SecAgg avoids) uses the Skellam
mechanism: each client adds its share of integer noise to its clipped, scaled and rounded update
(`encoding.encode_update`, on the grid of `encoding.skellam_grid`); the modular sum decodes to the survivors'
noised integer sum, divided by s qN (DP-FedAvg's fixed denominator). Its two epsilons are `budget.Budget`'s.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fedarena.core.params import in_client_order
from fedarena.core.rng import numpy_rng, torch_rng
from fedarena.core.types import Broadcast, FedarenaError, Params, ServerState, Upload
from fedarena.privacy import dp
from fedarena.privacy.accountant import AccountantConfig
from fedarena.privacy.budget import Budget
from fedarena.privacy.checks import enabled
from fedarena.privacy.encoding import ClientPrivacy, encode_update, mean_from_sum, skellam_grid
from fedarena.privacy.fixedpoint import centered_lift
from fedarena.privacy.secagg import SecAggAbort, SecAggResult, run_secagg

log = logging.getLogger(__name__)

MIN_SECAGG_CLIENTS = 3  # a secure sum of fewer reveals too much (1: the update itself); such rounds abort
_OS = secrets.SystemRandom()


@dataclass
class Privacy:
    settings: Any  # config.PrivacyConfig
    population: int
    per_round: int
    seed: int
    max_weight: int
    budget: Budget  # the accounting: epsilon, the target stop, participations, the summary's DP fields
    overhead: dict[str, float] = field(default_factory=lambda: {"up": 0, "down": 0, "seconds": 0.0, "rounds": 0})
    secagg_summary: dict[str, Any] | None = None
    aborted: list[int] = field(default_factory=list)  # rounds whose secure aggregation aborted
    transport: str = "in-process (simulated messages)"
    skellam: tuple[float, float] | None = None  # central DP under SecAgg: (scale s, integer-domain L2 sensitivity)

    @classmethod
    def build(cls, settings: Any, algo: Any, population: int, per_round: int, seed: int, max_weight: int,
              shared_dim: int = 0) -> "Privacy | None":
        """`shared_dim`: the number of shared parameters (central DP under SecAgg sizes its integer grid by it)."""
        if not enabled(settings) or not algo.communicates:
            return None  # nothing is uploaded (local) or nothing is federated (centralized)
        skellam, sensitivity = None, None
        if settings.dp_clip > 0 and settings.dp_mode == "central" and settings.secagg:
            scale, l2, l1 = skellam_grid(settings, population, shared_dim)
            skellam, sensitivity = (scale, l2), (l2, l1)
        budget = Budget.build(settings, population, per_round, skellam=sensitivity)
        return cls(settings, population, per_round, seed, max_weight, budget, skellam=skellam)

    @property
    def accountant(self) -> AccountantConfig | None:
        """Central DP's accountant config (the budget's); None without central DP."""
        return self.budget.accountant

    # ------------------------------------------------------------ the engine's three calls
    def sample(self, rnd: int, clients: list[int], default: list[int]) -> list[int]:
        """DP-FedAvg's client sample. Seeded per (seed, round, client) in simulation; with `secure_noise` (every
        deployment) drawn from the OS, since amplification by sampling assumes the sample is secret."""
        s = self.settings
        if s.dp_clip <= 0:
            return default
        if s.sampling == "fixed":
            return sorted(_OS.sample(clients, min(self.per_round, len(clients)))) if s.secure_noise else default
        q = self.per_round / self.population  # fixed for the run: excluding a client changes no one else's draw
        if s.secure_noise:
            return [c for c in clients if _OS.random() < q]
        return [c for c in clients if numpy_rng(self.seed, "poisson-sample", rnd, c).random() < q]

    def rounds_allowed(self, rounds: int) -> int:
        return self.budget.rounds_allowed(rounds)

    def train_and_aggregate(self, algo: Any, server: ServerState, clients: Any, rnd: int,
                            broadcasts: dict[int, Broadcast]) -> tuple[dict[int, Upload], ServerState]:
        """One round's client work and server step; returns (what the server received in the clear, new state).

        In-process runtimes train as usual and `aggregate` applies privacy to their uploads. A runtime whose
        clients protect their own updates (``protects_updates``) gets `ClientPrivacy`: with local DP only,
        its uploads arrive noised; under SecAgg, `train_secure` returns only the sum (the uploads returned
        here are empty placeholders for the survivors), and an aborted protocol keeps the server state."""
        s = self.settings
        local_dp = s.dp_clip > 0 and s.dp_mode == "local"
        if not broadcasts:  # an empty (Poisson) sample: nothing to train; central DP still adds its noise
            return {}, self.aggregate(algo, server, {}, rnd)
        if s.secagg and len(broadcasts) < MIN_SECAGG_CLIENTS:
            return {}, self._abort(server, rnd, f"only {len(broadcasts)} clients sampled")
        if not clients.protects_updates or not (s.secagg or local_dp):
            uploads = in_client_order(clients.train(rnd, broadcasts))
            return uploads, self.aggregate(algo, server, uploads, rnd)
        cp = self.client_privacy(rnd, len(broadcasts))
        if not s.secagg:
            uploads = in_client_order(clients.train(rnd, broadcasts, protect=cp))
            return uploads, self.aggregate(algo, server, uploads, rnd, noised_by_clients=True)
        ref = _reference(algo, server, broadcasts)
        self.transport = clients.transport
        try:
            result = clients.train_secure(rnd, broadcasts, cp)
            # the protocol's wall time: its stages after the training reply that carried the public keys
            mean = self._secure_result(ref, result, cp, result.seconds)
        except SecAggAbort as exc:
            return {}, self._abort(server, rnd, str(exc))
        self.budget.count(rnd, {c: None for c in result.survivors})
        return {c: Upload() for c in sorted(result.survivors)}, algo.aggregate(server, {0: Upload(params=mean, num_samples=1)})

    def client_privacy(self, rnd: int, n: int) -> ClientPrivacy:
        """The round's `ClientPrivacy` for n participating clients (t defaults to n // 2 + 1)."""
        s = self.settings
        local = s.dp_clip > 0 and s.dp_mode == "local"
        k = s.secagg_neighbours if s.secagg_neighbours and s.secagg_neighbours < n - 1 else 0
        group = k + 1 if k else n  # a client's neighbourhood (SecAgg+) or everyone (SecAgg)
        scale, l2 = self.skellam or (0.0, 0.0)
        return ClientPrivacy(round=rnd, dp_clip=s.dp_clip if local else 0.0, dp_noise=s.dp_noise if local else 0.0,
                             secagg=s.secagg, clients=n, max_weight=self.max_weight, fp_clip=s.secagg_clip,
                             bits=s.secagg_bits, threshold=min(s.secagg_threshold or group // 2 + 1, group),
                             neighbours=k, skellam_clip=s.dp_clip if self.skellam else 0.0, skellam_scale=scale,
                             skellam_variance=(s.dp_noise * l2) ** 2 if self.skellam else 0.0)

    def aggregate(self, algo: Any, server: ServerState, uploads: dict[int, Upload], rnd: int,
                  noised_by_clients: bool = False) -> ServerState:
        ups = {c: u for c, u in uploads.items() if u.params}
        s = self.settings
        central = s.dp_clip > 0 and s.dp_mode == "central"
        self.budget.count(rnd, ups)
        if not ups and not central:
            return algo.aggregate(server, uploads)
        ref = {k: server.params[k] for k in sorted(next(iter(ups.values())).params)} if ups else _reference(algo, server, {})
        keys = sorted(ref)
        noise = self._noise(rnd)
        if central and not s.secagg:  # noise is added even to an empty round: the accountant counts every round
            mean = dp.central_dp_mean(ref, [u.params for u in ups.values()], s.dp_clip, s.dp_noise,
                                      self.per_round, noise)
            return algo.aggregate(server, {0: Upload(params=mean, num_samples=1)})
        deltas = {c: {k: u.params[k] - ref[k] for k in keys} for c, u in ups.items()}
        if s.dp_clip > 0 and not central and not noised_by_clients:  # local DP: each client noises its own update
            deltas = {c: dp.local_dp(d, s.dp_clip, s.dp_noise, self._noise(rnd, c)) for c, d in deltas.items()}
        if not s.secagg:
            return algo.aggregate(server, {c: Upload(params={k: ref[k] + d[k] for k in keys}, num_samples=ups[c].num_samples)
                                           for c, d in deltas.items()})
        if len(deltas) < MIN_SECAGG_CLIENTS:
            return self._abort(server, rnd, f"only {len(deltas)} clients uploaded")
        try:
            mean = self._secure_mean(ref, deltas, {c: u.num_samples for c, u in ups.items()}, rnd)
        except SecAggAbort as exc:
            return self._abort(server, rnd, str(exc))
        return algo.aggregate(server, {0: Upload(params=mean, num_samples=1)})

    # ------------------------------------------------------------ pieces
    def _abort(self, server: ServerState, rnd: int, why: str) -> ServerState:
        """A round without a secure sum keeps the previous server state (no partial or wrong aggregate)."""
        self.aborted.append(rnd)
        log.warning("round %d: secure aggregation aborted, the server keeps its previous state (%s)", rnd, why)
        return server

    def _noise(self, rnd: int, client: int | None = None) -> Any:
        if self.settings.secure_noise:
            return dp.SecureNoise()
        return dp.SeededNoise(torch_rng(self.seed, "dp-noise", rnd, *(() if client is None else (client,))))

    def _secure_mean(self, ref: Params, deltas: dict[int, Params], weights: dict[int, int], rnd: int) -> Params:
        cp = self.client_privacy(rnd, len(deltas))
        vectors = {c: encode_update(d, weights[c], cp, self._noise(rnd, c)) for c, d in deltas.items()}
        start = time.perf_counter()
        result = run_secagg(vectors, threshold=cp.threshold, bits=cp.bits, neighbours=cp.neighbours or None,
                            round_id=rnd)
        return self._secure_result(ref, result, cp, time.perf_counter() - start)

    def _secure_result(self, ref: Params, result: SecAggResult, cp: ClientPrivacy, seconds: float) -> Params:
        """Count the protocol's overhead and decode its sum into the survivors' weighted mean."""
        dim = sum(v.numel() for v in ref.values()) + (0 if cp.skellam_clip > 0 else 1)
        if len(result.sum) != dim:
            raise FedarenaError(f"round {cp.round}: the secure sum has {len(result.sum)} entries, the shared "
                                f"params need {dim} (update{'' if cp.skellam_clip > 0 else ' + weight'})")
        self.overhead["seconds"] += seconds
        self.overhead["up"] += sum(b.overhead_up for b in result.bytes_per_client.values())
        self.overhead["down"] += sum(b.overhead_down for b in result.bytes_per_client.values())
        self.overhead["rounds"] += 1
        self.secagg_summary = result.summary()
        if cp.skellam_clip > 0:  # the survivors' integer sum, noise included, over the fixed denominator qN
            integer_sum = torch.from_numpy(centered_lift(result.sum, cp.bits))
            return dp.skellam_mean(ref, integer_sum, cp.skellam_scale, self.per_round)
        total = cp.fixed_point().decode(result.sum)
        if not total[-1] > 0:
            raise SecAggAbort(f"round {cp.round}: the secure sum's total weight is {total[-1]:g}, not > 0")
        return mean_from_sum(ref, total)

    # ------------------------------------------------------------ continuing a run
    def state(self, rounds: int) -> dict[str, Any]:
        """Plain JSON of everything the budget and the summary depend on after `rounds` rounds (`restore`
        continues from it: a continued run's epsilon counts every round since the first, never from zero)."""
        return {
            "rounds": rounds,
            **self.budget.state(rounds),
            "aborted": list(self.aborted),
            "overhead": dict(self.overhead),
            "secagg_summary": self.secagg_summary,
        }

    def restore(self, state: Any, rounds: int) -> None:
        """Continue after round `rounds` from `state()` saved then; refuses a state of another round or
        another accounting config."""
        try:
            if state["rounds"] != rounds:
                raise FedarenaError(f"privacy state is of round {state['rounds']}, the checkpoint of round {rounds}")
            self.budget.restore(state)
            self.aborted = [int(r) for r in state["aborted"]]
            self.overhead = {k: type(v)(state["overhead"][k]) for k, v in self.overhead.items()}
            self.secagg_summary = state["secagg_summary"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FedarenaError(f"privacy state is malformed ({type(exc).__name__}: {exc})") from None

    # ------------------------------------------------------------ reporting
    def epsilon(self, rounds: int) -> float | None:
        return self.budget.epsilon(rounds)

    def summary(self, rounds: int) -> dict[str, Any]:
        s = self.settings
        return {
            "secagg": self.secagg_summary | {"threshold": s.secagg_threshold or "n//2+1",
                                              "overhead_bytes_per_round": (self.overhead["up"] + self.overhead["down"])
                                              / max(1, self.overhead["rounds"]),
                                              "seconds_per_round": self.overhead["seconds"] / max(1, self.overhead["rounds"]),
                                              "aborted_rounds": len(self.aborted), "transport": self.transport}
            if s.secagg and self.secagg_summary else ({"rounds": 0, "aborted_rounds": len(self.aborted)} if s.secagg else None),
            **self.budget.summary(rounds),
            "rounds": rounds,
        }


def _reference(algo: Any, server: ServerState, broadcasts: dict[int, Broadcast]) -> Params:
    """The shared params every update is taken against: the server's, which each broadcast must carry (the
    clients compute their update against what they downloaded)."""
    ref = {k: server.params[k] for k in sorted(server.params) if not algo.personal(k)}
    for c, b in broadcasts.items():
        if any(k not in b.params or not torch.equal(b.params[k], v) for k, v in ref.items()):
            raise FedarenaError(f"{algo.name} broadcasts to client {c} other shared params than its server state; "
                                "clients could not compute their update against it under secure aggregation")
    return ref
