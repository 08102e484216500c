"""Poisoning attacks as pure functions: which clients are malicious, what they do to their data, what they upload.

A malicious client (DESIGN.md's word) trains like every other client and then lies. Data poisoning changes its
training data once, before training (`poison_data`); model poisoning replaces its upload every round, after honest
local work (`poison_uploads`). Uploads hold only the shared keys, so for pFL algorithms the attack targets what is
shared. In every formula below, w is the client's broadcast params for the upload's keys (what it started the round
from), w_k its honest result, and everything is computed per coordinate in float64 and stored in the key's dtype.

- ``label-flip`` (data): every training label y of a malicious client becomes C - 1 - y, the label-flipping attack
  of Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning" (USENIX Security 2020),
  which flips l to L - l - 1 (Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems",
  ESORICS 2020, study flipping one source class to one target class).
- ``backdoor`` (data): a share `fraction` of every malicious client's training samples carry the trigger of
  data/backdoor.py (the forget probe's) with label `target`; uploads are honest results of that training.
- ``scale`` (data + model): model replacement, Bagdasaryan et al., "How To Backdoor Federated Learning" (AISTATS
  2020), eq. (3): on the backdoored data, the attacker uploads w + gamma (w_k - w) with gamma = n / eta, so that
  the server's step G + (eta / n) sum_i (L_i - G) (their eq. (1)) lands on the attacker's model. fedarena's
  FedAvg step is the num_samples-weighted mean (eta = 1, weights n_k / N), so the default gamma for client k is
  N / (f n_k): N the total weight of the round's uploads, n_k the client's, f the malicious uploads of the round
  (the paper's eq. (3) is for one attacker; f colluders each take 1/f of the boost, so that together they replace
  the model by the mean of their models instead of overshooting f-fold). The authors' code takes the same
  n / eta: `scale_weights: 100` with 100 participants and eta = 1 (ebagdasa/backdoor_federated_learning,
  utils/params.yaml; helper.py averages with eta / number_of_total_participants). With a server optimizer
  (eta != 1) or a robust aggregator the default is not exact replacement; `attack.scale` sets gamma explicitly.
- ``sign-flip`` (model): w - s (w_k - w), s = `attack.scale`, default 4 (issue #18): the honest update reversed
  and amplified, the sign-flipping attack of the Byzantine-robustness literature.
- ``gaussian`` (model): w + e, e ~ N(0, sigma^2 I) drawn from torch_rng(seed, "attack", round, client): the
  Gaussian Byzantine workers of Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent" (Krum, NeurIPS 2017), experiments (Figs. 4, 6): the update replaced by a vector drawn from N(0, 200^2 I);
  default sigma = 200 as there.
- ``alie`` (model): "A Little Is Enough", Baruch, Baruch and Goldberg (NeurIPS 2019), non-omniscient: every
  malicious client uploads w + mu - z_max sd, with mu and sd the coordinate-wise mean and standard deviation
  (population, ddof 0) of the malicious clients' honest updates w_k - w of this round, and, with n the round's
  uploads and f its malicious ones, s = floor(n / 2 + 1) - f supporters needed and z_max = Phi^-1((n - s) / n)
  (the paper's z_max = max_z (phi(z) < (n - s) / n), phi the standard normal CDF). With a single malicious client
  in a round sd = 0 and the upload would be its honest result: it is left as it is (the attack does nothing that
  round). Where the malicious clients are a majority of the round (s < 1, outside the paper's setting) s = 1.

Non-floating keys (counters) pass unchanged; `num_samples`, `extra` and `metrics` are kept. Honest uploads are
passed through as the very same objects.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from fedarena.core.rng import numpy_rng, torch_rng
from fedarena.core.types import FedarenaError, FederatedData, Params, Upload
from fedarena.data.backdoor import add_trigger, planted_rows, trigger_value

KINDS = ("label-flip", "sign-flip", "scale", "gaussian", "alie", "backdoor")
DATA_KINDS = ("label-flip", "backdoor", "scale")  # poison the malicious clients' training data
MODEL_KINDS = ("sign-flip", "scale", "gaussian", "alie")  # replace the malicious clients' uploads
SIGN_FLIP_S = 4.0  # issue #18: "s = attack.scale (default 4)"
GAUSSIAN_SIGMA = 200.0  # Blanchard et al. 2017, experiments: N(0, 200^2 I)
BACKDOOR_FRACTION = 0.5  # the forget probe's default share (forget.probe_fraction), so the two backdoors agree


@dataclass(frozen=True)
class Attack:
    """One attack of a run (`[attack]`): `kind` (one of KINDS) run by a share `malicious` of the training clients.

    `scale`: sign-flip's s (None: 4) or model replacement's gamma (None: N / (f n_k) per round, see the module
    docstring); `sigma`: gaussian's standard deviation; `target`: the backdoor's label (backdoor, scale);
    `fraction`: the share of a malicious client's training samples that carry the trigger (backdoor, scale)."""

    kind: str
    malicious: float  # fraction of the training clients
    scale: float | None = None
    sigma: float = GAUSSIAN_SIGMA
    target: int = 0
    fraction: float = BACKDOOR_FRACTION


def check(attack: Attack) -> Attack:
    """`attack` if every field is valid, else a FedarenaError naming the first bad key."""
    if attack.kind not in KINDS:
        raise FedarenaError(f"attack.kind must be one of {', '.join(KINDS)}, got {attack.kind!r}")
    if not _number(attack.malicious) or not 0 < attack.malicious < 1:
        raise FedarenaError(f"attack.malicious must be a fraction in (0, 1) of the training clients, got {attack.malicious!r}")
    if attack.scale is not None and not (_number(attack.scale) and 0 < attack.scale < math.inf):
        raise FedarenaError(f"attack.scale must be a finite number > 0, got {attack.scale!r}")
    if not (_number(attack.sigma) and 0 < attack.sigma < math.inf):
        raise FedarenaError(f"attack.sigma must be a finite number > 0, got {attack.sigma!r}")
    if isinstance(attack.target, bool) or not isinstance(attack.target, int) or attack.target < 0:
        raise FedarenaError(f"attack.target must be a class label >= 0, got {attack.target!r}")
    if not _number(attack.fraction) or not 0 < attack.fraction <= 1:
        raise FedarenaError(f"attack.fraction must be in (0, 1], got {attack.fraction!r}")
    return attack


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def malicious_clients(seed: int, training: list[int], fraction: float) -> list[int]:
    """round(fraction x len(training)) of the training clients (halves round up), drawn from
    numpy_rng(seed, "malicious"), sorted. At least one client must be malicious and at least one benign."""
    if not _number(fraction) or not 0 < fraction < 1:
        raise FedarenaError(f"attack.malicious must be a fraction in (0, 1) of the training clients, got {fraction!r}")
    if len(set(training)) != len(training):
        raise FedarenaError("malicious_clients: the training clients must be distinct")
    k = math.floor(fraction * len(training) + 0.5)
    if not 0 < k < len(training):
        raise FedarenaError(f"attack.malicious={fraction} of {len(training)} training clients is {k} malicious clients; "
                            "an attack needs at least one malicious and one benign client")
    order = numpy_rng(seed, "malicious").permutation(len(training))[:k]
    return sorted(int(training[i]) for i in order)


def poison_data(attack: Attack, data: FederatedData, malicious: Collection[int], seed: int) -> FederatedData:
    """`data` with the malicious clients' training data poisoned (label-flip, backdoor, scale); `data` itself for the
    other kinds. Never mutates `data`: poisoned tensors are copies. Validation and test splits are left alone."""
    check(attack)
    bad = sorted(set(malicious))
    if any(not 0 <= c < data.num_clients for c in bad):
        raise FedarenaError(f"poison_data: malicious clients must be in [0, {data.num_clients}), got {bad}")
    if attack.kind not in DATA_KINDS or not bad:
        return data
    y = data.y_train.clone()
    if attack.kind == "label-flip":
        for c in bad:
            a, b = data.train_offsets[c], data.train_offsets[c + 1]
            y[a:b] = data.num_classes - 1 - y[a:b]
        return dataclasses.replace(data, y_train=y)
    if not attack.target < data.num_classes:
        raise FedarenaError(f"attack.target must be a class in [0, {data.num_classes}), got {attack.target}")
    x, value = data.x_train.clone(), trigger_value(data)
    for c in bad:
        rows = planted_rows(data, c, attack.fraction, seed, "attack-backdoor")
        x[rows] = add_trigger(x[rows], value)
        y[rows] = attack.target
    return dataclasses.replace(data, x_train=x, y_train=y)


def poison_uploads(attack: Attack, rnd: int, seed: int, uploads: Mapping[int, Upload],
                   broadcast_params: Mapping[int, Params], malicious: Collection[int]) -> dict[int, Upload]:
    """The round's uploads (same order) with the malicious clients' params replaced as `attack.kind` says (module
    docstring); honest uploads, and every upload for the data-only kinds, are the very same objects.

    `broadcast_params[c]` is what client c started the round from; it must hold every key c uploads (an algorithm
    whose uploads are not models over its broadcast keys, IFCA's per-cluster broadcast or MOCHA's dual deltas,
    needs its caller to pass the params each client trained from)."""
    check(attack)
    out, chosen = dict(uploads), set(malicious)
    bad = [c for c in uploads if c in chosen]
    if attack.kind not in MODEL_KINDS or not bad:
        return out
    deltas = {c: _deltas(c, uploads[c].params, broadcast_params) for c in bad}
    if attack.kind == "alie":
        if len(bad) < 2:  # sd = 0: w + mu is the honest result
            return out
        shift = _alie_shift([deltas[c] for c in bad], n=len(uploads))
        new = {c: shift for c in bad}
    elif attack.kind == "sign-flip":
        s = SIGN_FLIP_S if attack.scale is None else attack.scale
        new = {c: {k: -s * d for k, d in deltas[c].items()} for c in bad}
    elif attack.kind == "scale":
        total = sum(u.num_samples for u in uploads.values())
        new = {}
        for c in bad:
            if attack.scale is None and uploads[c].num_samples <= 0:  # no weight in the mean: nothing to boost
                continue
            gamma = total / (len(bad) * uploads[c].num_samples) if attack.scale is None else attack.scale
            new[c] = {k: gamma * d for k, d in deltas[c].items()}
    else:  # gaussian
        new = {c: _noise(deltas[c], attack.sigma, torch_rng(seed, "attack", rnd, c)) for c in bad}
    for c, shift in new.items():
        params, w = uploads[c].params, broadcast_params[c]
        out[c] = dataclasses.replace(uploads[c], params={
            k: (w[k].detach().cpu().double() + shift[k]).to(device=v.device, dtype=v.dtype) if k in shift else v
            for k, v in params.items()})
    return out


def _deltas(client: int, params: Params, broadcast_params: Mapping[int, Params]) -> dict[str, torch.Tensor]:
    """w_k - w in float64 for the floating keys of one upload (on the CPU)."""
    w = broadcast_params.get(client)
    if w is None:
        raise FedarenaError(f"poison_uploads: no broadcast params for malicious client {client}")
    out = {}
    for k, v in params.items():
        if not v.is_floating_point():
            continue
        if k not in w or tuple(w[k].shape) != tuple(v.shape):
            raise FedarenaError(f"poison_uploads: client {client}'s upload key {k!r} has no broadcast counterpart of "
                                "its shape; the attack needs the params the client trained from")
        out[k] = v.detach().cpu().double() - w[k].detach().cpu().double()
    return out


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al. 2019: s = floor(n / 2 + 1) - f (at least 1), z_max = Phi^-1((n - s) / n)."""
    if not 0 < f <= n or n < 2:
        raise FedarenaError(f"alie: needs 0 < f <= n and n >= 2 uploads, got n={n}, f={f}")
    s = max(1, n // 2 + 1 - f)
    return statistics.NormalDist().inv_cdf((n - s) / n)


def _alie_shift(deltas: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    """mu - z_max sd per key over the malicious clients' updates (population standard deviation)."""
    z = alie_z_max(n, len(deltas))
    out = {}
    for k in deltas[0]:
        stacked = torch.stack([d[k] for d in deltas])
        out[k] = stacked.mean(dim=0) - z * stacked.std(dim=0, correction=0)
    return out


def _noise(delta: dict[str, torch.Tensor], sigma: float, g: torch.Generator) -> dict[str, torch.Tensor]:
    """N(0, sigma^2) per coordinate for the floating keys, drawn in sorted key order from one generator."""
    return {k: sigma * torch.randn(delta[k].shape, generator=g, dtype=torch.float64) for k in sorted(delta)}
