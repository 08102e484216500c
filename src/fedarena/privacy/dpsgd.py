"""Sample-level differential privacy for a client's local training: DP-SGD, with Opacus.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with Differential Privacy",
CCS 2016, arXiv 1607.00133, Algorithm 1. Each step t of a client k with n_k train samples:
  1. a Poisson sample ("lot") L_t: every sample joins with probability q_k = B / n_k (B: the comparison's
     batch size; q_k = 1 when B >= n_k); the lot may be empty;
  2. per-sample gradients g_i = grad l(w; x_i, y_i) for i in L_t (`opacus.GradSampleModule`);
  3. clipping g_i <- g_i / max(1, ||g_i||_2 / C) (over all trainable keys together);
  4. noise and mean: g = (sum_i g_i + N(0, sigma^2 C^2 I)) / (q_k n_k), the *expected* lot size as the
     fixed denominator (Algorithm 1's 1/L);
  5. w <- w - lr g (plain SGD, the comparison's learning rate).
Steps 3-4 are `opacus.optimizers.DPOptimizer` (noise from a seeded `torch.Generator`), step 1 is Opacus's
`UniformWithReplacementSampler`, which takes floor(1 / q_k) = floor(n_k / B) lots per epoch (Opacus's default
``int(1 / sample_rate)``, computed here in integers so that float rounding cannot drop a step).

What it protects: each *training sample* of a client against whoever sees anything the client computed from
its training (the server, other clients, whoever receives the client's personal model): the trained params
are (epsilon_k, delta)-DP with respect to adding or removing one of client k's samples. User-level DP
(DP-FedAvg, `privacy/round.py`) protects a whole client's data against the server's model; the two are
different guarantees and can be on together.

Where it fits (`check_dpsgd`): algorithms that declare `per_sample_risk=True` (core/algorithm.py): every
`local_sgd` call of their `client_update` trains the plain per-sample empirical risk (`core.algorithm.task_loss`),
which is what DP-SGD trains (fedavg, the server-optimizer family, fedper, fedrep, lg-fedavg, fedbn without
BatchNorm, local, fedavg-ft, centralized). The others are refused with the reason they declare (`not_per_sample`):
Opacus clips per-sample gradients of a per-sample loss, and a regularizer's gradient (fedprox, scaffold, ditto, pfedme),
a meta-gradient (per-fedavg), a joint (apfl) or dual (mocha) objective is not one (adding it after the noise
would be a different algorithm), or the client releases something computed from its data outside DP-SGD (ifca's
cluster choice). Any model with BatchNorm is refused too (per-sample gradients are undefined with batch
statistics; Opacus refuses them). At run time, a `local_sgd` call with another objective is refused as well
(`_ClientTraining`): DP-SGD trains `task.loss_fn` and would silently drop any other term.

Only training is DP-SGD: the uploads and the client states kept from it. Evaluation-time personalization
(`personalize`, e.g. fedavg-ft's fine-tuning) and a new client's onboarding stay plain SGD: their result is used
on the client and never leaves it.

Accounting: client k's steps compose `PoissonSampledDpEvent(q_k, GaussianDpEvent(sigma))` (RDP: Mironov, Talwar,
Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530) through
`privacy.accountant` (dp-accounting), at `privacy.dp_delta`.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import statistics
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from importlib.metadata import version
from typing import Any

import torch

from fedarena.core.algorithm import task_loss
from fedarena.core.batched import SGDRequest
from fedarena.core.device import CPU, to_device
from fedarena.core.local_train import PRIVATE_SGD
from fedarena.core.types import SGD, Broadcast, ClientData, ClientState, FedarenaError, Params, Upload
from fedarena.privacy import accountant as acc

log = logging.getLogger(__name__)

def check_dpsgd(settings: Any, algo: Any, model: Any) -> None:
    """Refuse, before any work, DP-SGD where it does not fit (settings: config.PrivacyConfig; model:
    config.ModelConfig)."""
    if settings.sgd_noise <= 0:
        return
    if model.norm == "bn":
        raise FedarenaError("DP-SGD (privacy.sgd_noise) cannot train a model with BatchNorm (model.norm=bn): "
                            "per-sample gradients are undefined with batch statistics; use model.norm=none")
    if not algo.per_sample_risk:  # the algorithm's declaration (core/algorithm.py), with its reason
        raise FedarenaError(f"DP-SGD (privacy.sgd_noise) does not fit {algo.name}: {algo.not_per_sample} (Opacus clips "
                            "per-sample gradients of a per-sample empirical risk)")


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD's settings: noise multiplier sigma, per-sample clip C, delta; `secure_noise` seeds the noise and
    the Poisson lots from the OS instead of the client's seeded stream (not reproducible)."""

    noise_multiplier: float
    clip: float
    delta: float = acc.DEFAULT_DELTA
    secure_noise: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise FedarenaError(f"DP-SGD noise multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise FedarenaError(f"DP-SGD clip must be a finite number > 0, got {self.clip}")
        if not 0 < self.delta < 1:
            raise FedarenaError(f"DP-SGD delta must be in (0, 1), got {self.delta}")

    @classmethod
    def from_settings(cls, settings: Any) -> "DPSGD | None":
        """From config.PrivacyConfig: None when off (sgd_noise = 0)."""
        if settings.sgd_noise <= 0:
            return None
        return cls(settings.sgd_noise, settings.sgd_clip, settings.dp_delta, settings.secure_noise)


# ---------------------------------------------------------------- one client's DP-SGD


def sampling_rate(batch_size: int, n: int) -> float:
    """q = B / n (1 when B >= n)."""
    return min(1.0, batch_size / n)


def steps_per_epoch(batch_size: int, n: int) -> int:
    """floor(1 / q) = floor(n / B) lots per epoch (Opacus's int(1 / sample_rate)), at least one."""
    return max(1, n // batch_size)


def poisson_lots(n: int, batch_size: int, generator: torch.Generator) -> Any:
    """One epoch's Poisson lots (index lists), from Opacus's sampler."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    return UniformWithReplacementSampler(num_samples=n, sample_rate=sampling_rate(batch_size, n), generator=generator,
                                         steps=steps_per_epoch(batch_size, n))


def dp_sgd(task: Any, params: Params, trainable: frozenset[str], x: torch.Tensor, y: torch.Tensor, sgd: SGD,
           epochs: int, settings: DPSGD, lots: torch.Generator, noise: torch.Generator) -> tuple[Params, float, int]:
    """`epochs` epochs of DP-SGD (module docstring) on `task.loss_fn` from `params` (buffers included), training
    the `trainable` keys only; returns (new params, mean loss over non-empty lots, steps) like `local_sgd`.

    It computes on the CPU whatever the run's device (the result goes back to the device of `x`): Opacus draws its
    noise on the parameters' device from the given generator, and these generators are CPU ones, so that a seed
    gives the same noise on every machine."""
    device = x.device
    params, x, y = to_device(params, CPU), x.cpu(), y.cpu()
    out, loss, steps = _dp_sgd(task, params, trainable, x, y, sgd, epochs, settings, lots, noise)
    return to_device(out, device), loss, steps


def _dp_sgd(task: Any, params: Params, trainable: frozenset[str], x: torch.Tensor, y: torch.Tensor, sgd: SGD,
            epochs: int, settings: DPSGD, lots: torch.Generator, noise: torch.Generator) -> tuple[Params, float, int]:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = int(y.shape[0])
    model = copy.deepcopy(task.module).to(x.device)
    model.load_state_dict(params)
    model.train()
    train = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        if name in trainable:
            train.append(p)
    if not train:
        return {k: v.detach().clone() for k, v in params.items()}, float("nan"), 0
    net = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(train, lr=sgd.lr), noise_multiplier=settings.noise_multiplier,
                            max_grad_norm=settings.clip, expected_batch_size=min(sgd.batch_size, n),
                            loss_reduction="mean", generator=noise)
    losses, steps = [], 0
    sampler = poisson_lots(n, sgd.batch_size, lots)
    with warnings.catch_warnings():  # Opacus's hooks fire on module outputs when the input needs no gradient
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        for _ in range(epochs):
            for idx in sampler:
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss_fn(net(x[idx]), y[idx])
                # an empty lot still takes its (noise-only) step, as Algorithm 1 and the accountant assume
                (loss if idx else loss.nan_to_num(0.0)).backward()
                optimizer.step()
                steps += 1
                if idx:
                    losses.append(float(loss.detach()))
    net._close()  # removes Opacus's hooks from the copy
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, (sum(losses) / len(losses) if losses else float("nan")), steps


def _child(rng: torch.Generator, secure: bool) -> torch.Generator:
    """A generator for lots or noise: from the client's stream (seeded runs), else from the OS."""
    seed = secrets.randbits(62) if secure else int(torch.randint(0, 2**62, (1,), generator=rng))
    return torch.Generator().manual_seed(seed)


def _is_task_loss(objective: Any) -> bool:
    fn = objective.func if isinstance(objective, partial) else objective
    return getattr(fn, "__func__", fn) is task_loss


@dataclass
class _ClientTraining:
    """Serves one client_update's `local_sgd` calls with DP-SGD (set in `PRIVATE_SGD`); counts the steps."""

    settings: DPSGD
    task: Any
    rng: torch.Generator
    steps: int = 0
    rate: float = 0.0  # the largest q of its calls (one q per client for the algorithms that fit)

    def __call__(self, req: SGDRequest) -> tuple[Params, float, int]:
        if not _is_task_loss(req.objective):
            raise FedarenaError("DP-SGD trains the plain empirical risk only (core.algorithm.task_loss); this "
                                "local_sgd call has another objective")
        lots, noise = _child(self.rng, self.settings.secure_noise), _child(self.rng, self.settings.secure_noise)
        out = dp_sgd(self.task, req.params, req.trainable, req.x, req.y, req.sgd, req.epochs, self.settings, lots, noise)
        self.steps += out[2]
        self.rate = max(self.rate, sampling_rate(req.sgd.batch_size, int(req.y.shape[0])))
        return out


# ---------------------------------------------------------------- one algorithm run


@dataclass
class SampleLevel:
    """DP-SGD for one algorithm run: runs each client's training (`client_update`) and accounts its steps."""

    settings: DPSGD
    steps: dict[tuple[int, int], int] = field(default_factory=dict)  # (round, client) -> DP-SGD steps
    rates: dict[int, float] = field(default_factory=dict)  # client -> q_k

    @classmethod
    def build(cls, settings: Any) -> "SampleLevel | None":
        dpsgd = DPSGD.from_settings(settings)
        return None if dpsgd is None else cls(dpsgd)

    def client_update(self, algo: Any, task: Any, b: Broadcast, state: ClientState, d: ClientData,
                      rng: torch.Generator, rnd: int, client: int) -> tuple[Upload, ClientState]:
        """`algo.client_update` with every `local_sgd` call run as DP-SGD; records the client's steps."""
        training = _ClientTraining(self.settings, task, rng)
        token = PRIVATE_SGD.set(training)
        try:
            result = algo.client_update(task, b, state, d, rng)
        finally:
            PRIVATE_SGD.reset(token)
        if training.steps == 0:
            raise FedarenaError(f"DP-SGD: {algo.name}'s client_update took no local_sgd step, so DP-SGD protected "
                                "nothing of its local work")
        self.record(rnd, client, training.steps, training.rate)
        upload, state = result
        # the training loss is computed from the raw samples, with neither clipping nor noise: it stays on the client
        return replace(upload, metrics={}), state

    def record(self, rnd: int, client: int, steps: int, rate: float) -> None:
        """Steps a client reports from elsewhere (a Flower SuperNode runs `client_update` on its own copy)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or not 0 < rate <= 1:
            raise FedarenaError(f"DP-SGD report of client {client}: steps must be >= 1 and 0 < q <= 1, got "
                                f"{steps!r}, {rate!r}")
        self.steps[(rnd, client)] = self.steps.get((rnd, client), 0) + steps
        self.rates[client] = max(self.rates.get(client, 0.0), float(rate))

    def state(self) -> dict[str, Any]:
        """Plain JSON of the steps taken so far (a continued run's epsilons count them)."""
        return {"steps": [[r, c, n] for (r, c), n in sorted(self.steps.items())],
                "rates": {str(c): q for c, q in sorted(self.rates.items())}}

    def restore(self, state: Any) -> None:
        try:
            self.steps = {(int(r), int(c)): int(n) for r, c, n in state["steps"]}
            self.rates = {int(c): float(q) for c, q in state["rates"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FedarenaError(f"DP-SGD state is malformed ({type(exc).__name__}: {exc})") from None

    def epsilons(self, rounds: int) -> dict[int, float]:
        """Each client's epsilon at `delta` after its DP-SGD steps of rounds 1..`rounds` (clients that trained)."""
        totals: dict[int, int] = {}
        for (rnd, c), n in self.steps.items():
            if rnd <= rounds:
                totals[c] = totals.get(c, 0) + n
        s = self.settings
        return {c: acc.epsilon(s.noise_multiplier, self.rates[c], rounds=n, delta=s.delta) for c, n in totals.items()}

    def epsilon_max(self, rounds: int) -> float | None:
        eps = self.epsilons(rounds)
        return _finite(max(eps.values())) if eps else None

    def summary(self, rounds: int) -> dict[str, Any]:
        """summary.json's ``privacy.sample_level``."""
        eps = list(self.epsilons(rounds).values())
        s = self.settings
        return {
            "noise_multiplier": s.noise_multiplier, "clip": s.clip, "delta": s.delta,
            "epsilon_max": _finite(max(eps)) if eps else None,
            "epsilon_median": _finite(statistics.median(eps)) if eps else None,
            "accountant": "rdp", "library": f"opacus {version('opacus')}",
            # Opacus's secure_mode needs torchcsprng (not installed): the OS seeds torch's generator instead
            "noise_source": "os-seeded torch generator (not a CSPRNG)" if s.secure_noise else "seeded (simulation only)",
        }


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


USER_LEVEL_OFF = ("secagg", "dp_mode", "clip", "noise_multiplier", "delta", "epsilon", "accountant")


def privacy_block(user_level: dict[str, Any] | None, sample: SampleLevel | None, rounds: int) -> dict[str, Any] | None:
    """summary.json's `privacy`: the user-level block as it is, plus ``sample_level`` (null when DP-SGD is off);
    with DP-SGD alone, the user-level fields are null."""
    if sample is None:
        return None if user_level is None else {**user_level, "sample_level": None}
    base = user_level if user_level is not None else {k: None for k in USER_LEVEL_OFF} | {"rounds": rounds}
    return {**base, "sample_level": sample.summary(rounds)}


__all__ = ["DPSGD", "SampleLevel", "check_dpsgd", "dp_sgd", "poisson_lots", "privacy_block", "sampling_rate",
           "steps_per_epoch"]
