"""Privacy in the round loop: who is sampled, what the server learns of the uploads, and what it costs.

One object per algorithm run (`Privacy.build`), called by the engine at three points:
- `sample`: with DP and `sampling = "poisson"` every client takes part independently with probability
  q = clients_per_round / N, drawn from its own (seed, round, client) key (McMahan et al., ICLR 2018, Alg. 1);
- `rounds_allowed`: with `target_epsilon`, the run stops before the first round that would exceed it;
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
  works unchanged; others are refused at configuration time.
Personal keys are never uploaded, so they are neither masked nor noised: they never leave the client.

Where the clients run elsewhere (the Flower deployment), the server must never hold a single update, so the
engine calls `train_and_aggregate`: a runtime with ``protects_updates = True`` gets the round's `ClientPrivacy`
and its clients apply `client_delta` (local DP) and `encode_update` (SecAgg) to their own updates with the
same functions the simulation uses here; under SecAgg the runtime's `train_secure` returns only the protocol's
`SecAggResult` (the modular sum of the survivors' encodings), which `_secure_result` decodes as in simulation.
A round whose secure aggregation aborts (fewer than t survivors at some stage) leaves the server state as it
was, is logged, and is counted in the summary (`secagg.aborted_rounds`); the clients that trained in it keep
their local state, as any client whose reply is lost does.

Central DP together with SecAgg (the server must not add the noise: it never sees the sum before it is
unmasked, and trusting it to add noise afterwards is the trusted-server model SecAgg avoids) uses the Skellam
mechanism of Agarwal, Kairouz, Liu (NeurIPS 2021): each client clips its update to C, scales it by s, rounds it
to integers (conditional rounding) and adds Sk(0, mu / (t - 1)) so that, whichever client is considered, the
shares of the other t - 1 or more survivors alone sum to at least the accounted Sk(0, mu), mu = (z L2)^2
(`dp.skellam_*`); the modular sum decodes to the survivors' noised integer sum, divided by s qN (DP-FedAvg's
fixed denominator). s is a 10^4-level grid per clip norm, smaller where the modulus needs it (`skellam_grid`).
Two epsilons are reported: `epsilon`, the Skellam RDP under Poisson sampling (against whoever sees the models
but not who took part), and `epsilon_vs_server`, the same mechanism without amplification composed over the
most rounds any client took part in (the server draws the sample and sees who answered, so amplification by
sampling does not hold against it). A round with fewer than 3 sampled clients (or fewer than t survivors)
aborts and releases no update; whether it aborts depends on who was sampled, which neither epsilon covers:
the run warns when Poisson sampling makes such rounds likely (expected clients per round below 20).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedarena.core.algorithm import MEAN_STEPS
from fedarena.core.params import in_client_order
from fedarena.core.rng import numpy_rng, torch_rng
from fedarena.core.types import Broadcast, FedarenaError, Params, ServerState, Upload
from fedarena.privacy import accountant as acc
from fedarena.privacy import dp
from fedarena.privacy.dpsgd import check_dpsgd
from fedarena.privacy.fixedpoint import FixedPoint, centered_lift, wrap
from fedarena.privacy.secagg import SecAggAbort, SecAggConfig, SecAggResult, run_secagg

log = logging.getLogger(__name__)

MIN_SECAGG_CLIENTS = 3  # a secure sum of fewer reveals too much (1: the update itself); such rounds abort
_OS = secrets.SystemRandom()


def check(settings: Any, algo: Any, model: Any) -> None:
    """Refuse, before any work, what cannot hold together (settings: config.PrivacyConfig; model:
    config.ModelConfig, whose parameter names and dtypes show which keys would be shared)."""
    check_dpsgd(settings, algo, model)
    if not enabled(settings):
        return
    if algo.communicates and algo.server_step not in MEAN_STEPS:
        raise FedarenaError(
            f"privacy (DP/secure aggregation) cannot be applied to {algo.name}: its server step is not a weighted "
            f"mean of uploaded models (server_step={algo.server_step!r}), so the server would need each client's "
            "update in the clear"
        )
    if settings.secagg and settings.dp_clip > 0 and settings.dp_mode == "central" and (
            settings.sampling != "poisson" or settings.accountant != "rdp"):
        raise FedarenaError(
            "central DP with secure aggregation adds Skellam noise, accounted only with privacy.sampling=poisson and "
            f"privacy.accountant=rdp (got {settings.sampling}, {settings.accountant})"
        )
    from fedarena.tasks import build_module  # names and dtypes do not depend on the input size

    shape = (1, 8, 8) if model.name == "cnn" else (4,)
    params = build_module(model.name, shape, 2, 2, model.norm if model.name != "mlr" else "none").state_dict()
    integer = sorted(k for k, v in params.items() if not algo.personal(k) and not v.is_floating_point())
    if algo.communicates and integer:
        raise FedarenaError(f"privacy needs float shared parameters; {algo.name} shares the integer {integer[0]} "
                            "(model.norm=bn's counters: use fedbn, which keeps them personal, or model.norm=none)")


SKELLAM_TAIL = 12.0  # the modulus holds the sum and this many standard deviations of its noise
SKELLAM_LEVELS = 1e4  # grid levels per clip norm: s C (the rounding error per coordinate is C / 1e4, far below
# the noise z C of any useful z; finer grids only make the clients' exact OS-drawn Poisson shares slower)


def skellam_grid(settings: Any, population: int, dim: int) -> tuple[float, float, float]:
    """(scale s, L2, L1) of central DP under SecAgg: s C = SKELLAM_LEVELS, or less where the sum would not fit.

    Up to N = `population` clients each contribute an integer vector of L2 norm <= L2 (so every coordinate is
    within L2), and the survivors' Skellam shares sum to variance at most N mu (t >= 1), mu = (z L2)^2; the
    modulus 2^bits must hold L2 (N + TAIL z sqrt(N)) in absolute value. L2 <= sC + sqrt(d) (the deterministic
    bound of ``dp.skellam_sensitivity``), so s <= (2^(bits-1) / (N + TAIL z sqrt(N)) - sqrt(d)) / C."""
    if dim < 1:
        raise FedarenaError("central DP under secure aggregation needs the number of shared parameters")
    room = (2 ** (settings.secagg_bits - 1) - 1) / (population + SKELLAM_TAIL * settings.dp_noise * math.sqrt(population))
    fits = (room - math.sqrt(dim)) / settings.dp_clip
    if fits * settings.dp_clip < 10 * math.sqrt(dim):
        raise FedarenaError(
            f"privacy.secagg_bits={settings.secagg_bits} leaves no integer resolution for central DP under secure "
            f"aggregation with {population} clients and {dim} shared parameters; raise secagg_bits (up to 64)")
    scale = min(fits, SKELLAM_LEVELS / settings.dp_clip)
    l2, l1 = dp.skellam_sensitivity(settings.dp_clip, scale, dim)
    return scale, l2, l1


def shared_numel(module: Any, algo: Any) -> int:
    """How many parameters `algo` shares of the model `module` (what a secure sum and its noise cover)."""
    return sum(v.numel() for k, v in module.state_dict().items() if not algo.personal(k))


def enabled(settings: Any) -> bool:
    return settings.dp_clip > 0 or settings.secagg


@dataclass(frozen=True)
class ClientPrivacy:
    """What every client of one round does to its own update before it leaves (a deployment sends it along
    with the broadcast): local DP (``dp_clip`` > 0) and/or SecAgg over ``clients`` participants."""

    round: int
    dp_clip: float  # local DP's C; 0: none
    dp_noise: float
    secagg: bool
    clients: int  # n: the fixed-point capacity (the round's sampled clients)
    max_weight: int  # W: the public bound on a client's train size n_k
    fp_clip: float  # fixed-point range of each (weighted) update coordinate
    bits: int
    threshold: int
    neighbours: int  # SecAgg+ degree k; 0: complete graph
    skellam_clip: float = 0.0  # central DP under SecAgg: C; 0: none (then the update is fixed-point encoded)
    skellam_scale: float = 0.0  # s: the integer grid is update * s
    skellam_variance: float = 0.0  # the accounted total Skellam variance mu = (z L2)^2 of the survivors' sum

    def fixed_point(self) -> FixedPoint:
        return FixedPoint.for_clients(self.clients, max(self.fp_clip, 1.0), self.bits)  # >= 1 for the weight entry

    def secagg_config(self) -> SecAggConfig:
        return SecAggConfig(self.threshold, self.bits, self.neighbours or None, self.round)


def client_delta(ref: Params, params: Params, cp: ClientPrivacy, noise: Any) -> Params:
    """A client's update params - ref over the uploaded keys, clipped and noised when local DP is on."""
    delta = {k: params[k] - ref[k] for k in sorted(params)}
    return dp.local_dp(delta, cp.dp_clip, cp.dp_noise, noise) if cp.dp_clip > 0 else delta


def encode_update(delta: Params, num_samples: int, cp: ClientPrivacy, noise: Any = None) -> np.ndarray:
    """The SecAgg input, keys in sorted order. Plain SecAgg: fixed-point residues of (w * update, w),
    w = n_k / W. Central DP under SecAgg (``skellam_clip`` > 0): the update clipped to C, scaled by s, rounded
    to integers (conditional rounding) plus this client's Skellam share Sk(0, mu / (t - 1)), as residues mod 2^bits
    (`noise`: the client's own source)."""
    if cp.skellam_clip > 0:
        if noise is None:
            raise FedarenaError("a Skellam-noised update needs the client's noise source")
        integer = dp.skellam_encode(delta, cp.skellam_clip, cp.skellam_scale, noise)
        # Sk(0, mu / (t - 1)): whichever client's contribution is considered, the other t - 1 or more survivors'
        # shares alone sum to at least Sk(0, mu)
        integer = integer + dp.skellam_share(integer.numel(), cp.skellam_variance, max(cp.threshold - 1, 1), noise)
        return wrap(integer.numpy(), cp.bits)
    w = num_samples / cp.max_weight
    flat = torch.cat([delta[k].reshape(-1).double() for k in sorted(delta)]) * w
    return cp.fixed_point().encode(np.append(flat.numpy(), w))


def mean_from_sum(ref: Params, total: np.ndarray) -> Params:
    """ref + (decoded weighted sum) / (sum of weights), in ref's sorted key order and dtypes."""
    mean = torch.from_numpy(total[:-1] / total[-1])
    out, i = {}, 0
    for k in sorted(ref):
        v = ref[k]
        out[k] = (v.double() + mean[i : i + v.numel()].reshape(v.shape)).to(v.dtype)
        i += v.numel()
    return out


@dataclass
class Privacy:
    settings: Any  # config.PrivacyConfig
    population: int
    per_round: int
    seed: int
    max_weight: int
    accountant: acc.AccountantConfig | None = None
    overhead: dict[str, float] = field(default_factory=lambda: {"up": 0, "down": 0, "seconds": 0.0, "rounds": 0})
    participations: dict[int, int] = field(default_factory=dict)
    most_by_round: dict[int, int] = field(default_factory=dict)  # round -> most uploads by one client so far
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
        out = cls(settings, population, per_round, seed, max_weight)
        if settings.dp_clip > 0 and settings.dp_mode == "central" and settings.secagg:
            scale, l2, l1 = skellam_grid(settings, population, shared_dim)
            out.skellam = (scale, l2)
            lam = per_round  # Poisson: P(fewer than 3 clients sampled) = e^-lam (1 + lam + lam^2 / 2)
            p_abort = math.exp(-lam) * (1 + lam + lam * lam / 2)
            if p_abort > 1e-6:
                log.warning("central DP under SecAgg: with %d expected clients per round, %.2g of rounds sample "
                            "fewer than 3 and abort; whether a round aborts depends on who was sampled, which the "
                            "reported epsilon does not cover (aim for >= 20 clients per round)", per_round, p_abort)
            out.accountant = acc.AccountantConfig(
                noise_multiplier=settings.dp_noise, delta=settings.dp_delta, population=population,
                per_round=per_round, mechanism="skellam", l2_sensitivity=l2, l1_sensitivity=l1)
        elif settings.dp_clip > 0 and settings.dp_mode == "central":
            out.accountant = acc.AccountantConfig(
                noise_multiplier=settings.dp_noise, delta=settings.dp_delta, population=population,
                per_round=per_round, sampling=settings.sampling, accountant=settings.accountant)
            warning = acc.check_delta(settings.dp_delta, population)
            if warning:
                log.warning("%s", warning)
        return out

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
        target = self.settings.target_epsilon
        if target is None or self.settings.dp_clip <= 0:
            return rounds
        if self.accountant is not None:
            allowed = acc.Accountant(self.accountant).max_rounds(target, rounds)
        else:  # local DP: a client's worst case takes part in every round
            allowed = next((r for r in range(rounds, -1, -1)
                            if r == 0 or acc.local_epsilon(self.settings.dp_noise, r, self.settings.dp_delta) <= target), 0)
        if allowed < 1:
            raise FedarenaError(f"privacy.target_epsilon={target} is exceeded by a single round at "
                                f"dp_noise={self.settings.dp_noise}; raise the noise or the target")
        if allowed < rounds:
            log.warning("target epsilon %.3g reached: training stops after round %d of %d", target, allowed, rounds)
        return allowed

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
            mean = self._secure_result(ref, result, cp, sum(result.server_seconds.values()))
        except SecAggAbort as exc:
            return {}, self._abort(server, rnd, str(exc))
        self._count(rnd, {c: None for c in result.survivors})
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
        self._count(rnd, ups)
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

    def _count(self, rnd: int, uploaders: dict[int, Any]) -> None:
        """Participations so far, and after each round the most any client has made (local DP's epsilon)."""
        for c in uploaders:
            self.participations[c] = self.participations.get(c, 0) + 1
        self.most_by_round[rnd] = max(self.participations.values(), default=0)

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
            "accountant": acc.Accountant(self.accountant, rounds).state() if self.accountant else None,
            "participations": {str(c): n for c, n in sorted(self.participations.items())},
            "most_by_round": {str(r): n for r, n in sorted(self.most_by_round.items())},
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
            if self.accountant is not None:
                if state["accountant"] is None:
                    raise FedarenaError("privacy state has no accountant, but the run uses central DP")
                acc.Accountant.resume(state["accountant"], self.accountant)
            self.participations = {int(c): int(n) for c, n in state["participations"].items()}
            self.most_by_round = {int(r): int(n) for r, n in state["most_by_round"].items()}
            self.aborted = [int(r) for r in state["aborted"]]
            self.overhead = {k: type(v)(state["overhead"][k]) for k, v in self.overhead.items()}
            self.secagg_summary = state["secagg_summary"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FedarenaError(f"privacy state is malformed ({type(exc).__name__}: {exc})") from None

    # ------------------------------------------------------------ reporting
    def epsilon(self, rounds: int) -> float | None:
        s = self.settings
        if s.dp_clip <= 0:
            return None
        if s.dp_noise == 0:
            return math.inf
        if self.accountant is not None:
            return acc.epsilon_for(self.accountant, rounds)
        most = max((v for r, v in self.most_by_round.items() if r <= rounds), default=0)
        return acc.local_epsilon(s.dp_noise, most, s.dp_delta) if most else 0.0

    def epsilon_vs_server(self, rounds: int) -> float | None:
        """Central DP under SecAgg, against the server (who knows the sample): the Skellam mechanism without
        sampling amplification, composed over the most rounds any client took part in through `rounds`."""
        most = max((v for r, v in self.most_by_round.items() if r <= rounds), default=0)
        if not most:
            return 0.0
        unsampled = dataclasses.replace(self.accountant, sampling_probability=1.0, population=None, per_round=None)
        eps = acc.epsilon_for(unsampled, most)
        return None if math.isinf(eps) else eps

    def summary(self, rounds: int) -> dict[str, Any]:
        s = self.settings
        eps = self.epsilon(rounds)
        return {
            "secagg": self.secagg_summary | {"threshold": s.secagg_threshold or "n//2+1",
                                              "overhead_bytes_per_round": (self.overhead["up"] + self.overhead["down"])
                                              / max(1, self.overhead["rounds"]),
                                              "seconds_per_round": self.overhead["seconds"] / max(1, self.overhead["rounds"]),
                                              "aborted_rounds": len(self.aborted), "transport": self.transport}
            if s.secagg and self.secagg_summary else ({"rounds": 0, "aborted_rounds": len(self.aborted)} if s.secagg else None),
            "dp_mode": s.dp_mode if s.dp_clip > 0 else None,
            "clip": s.dp_clip if s.dp_clip > 0 else None,
            "noise_multiplier": s.dp_noise if s.dp_clip > 0 else None,
            "delta": s.dp_delta if s.dp_clip > 0 else None,
            "epsilon": None if eps is None or math.isinf(eps) else eps,
            "epsilon_vs_server": self.epsilon_vs_server(rounds) if self.skellam else None,
            "accountant": (("rdp (Skellam: integer noise the clients add under SecAgg)" if self.skellam else s.accountant)
                           if self.accountant else "local-gaussian per client") if s.dp_clip > 0 else None,
            "sampling": (s.sampling if s.dp_clip > 0 else "fixed"),
            "noise_source": "os-secure" if s.secure_noise else "seeded (simulation only)",
            "sampling_source": ("os-secure" if s.secure_noise else "seeded (simulation only)") if s.dp_clip > 0 else None,
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
