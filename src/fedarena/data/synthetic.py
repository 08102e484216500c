"""Synthetic(alpha, beta) federated data of Li et al., "Federated Optimization in Heterogeneous
Networks" (FedProx), MLSys 2020, arXiv:1812.06127, Sec. 5.1.

For each client k (d = ``num_features``, C = ``num_classes``)::

    u_k ~ N(0, alpha)        W_k in R^{d x C}, entries ~ N(u_k, 1)      b_k in R^C, entries ~ N(u_k, 1)
    B_k ~ N(0, beta)         v_k in R^d, entries ~ N(B_k, 1)
    x ~ N(v_k, Sigma)        Sigma diagonal, Sigma_jj = j^(-1.2), j = 1..d
    y = argmax(x W_k + b_k)

The paper writes N(0, alpha) and N(0, beta); its public generator
(``data/synthetic_*/generate_synthetic.py`` of github.com/litian96/FedProx) calls
``np.random.normal(0, alpha)``, whose second argument is the standard deviation. We follow the
generator: ``alpha`` and ``beta`` are standard deviations. ``Sigma_jj`` is a variance, as in the
generator's covariance matrix.

Synthetic-IID (``iid=True``): one ``W, b ~ N(0, 1)`` shared by all clients and ``v_k = 0``.

Samples per client: ``samples_per_client`` if positive, else ``int(lognormal(4, 2)) + 50`` as in
the generator (heavy-tailed: a few clients get thousands of samples).

Note: adding the same ``u_k`` to every entry of ``W_k`` and ``b_k`` shifts all C logits by the
same amount ``u_k (sum(x) + 1)``, so the argmax label does not depend on ``u_k``: for a fixed
random draw, ``alpha`` changes nothing observable. The label heterogeneity between clients comes
from the per-client ``W_k`` noise and from ``beta`` (larger ``|v_k|`` lets one class dominate).

Every client draws from its own stream ``numpy_rng(seed, "synthetic", k)`` (the shared IID model
from ``numpy_rng(seed, "synthetic:shared")``), so client k's data does not depend on how many
clients there are.
"""

from __future__ import annotations

import numpy as np

from fedarena.core.rng import numpy_rng
from fedarena.data.spec import SyntheticConfig


def _feature_std(num_features: int) -> np.ndarray:
    """Per-feature standard deviation: sqrt(j^-1.2) for j = 1..d."""
    return np.arange(1, num_features + 1, dtype=np.float64) ** -0.6


def _client_size(cfg: SyntheticConfig, rng: np.random.Generator) -> int:
    # Drawn always (the stream's first draw), so that samples_per_client changes only the size, never the model
    # or v_k.
    lognormal_size = int(rng.lognormal(4, 2)) + 50
    return cfg.samples_per_client if cfg.samples_per_client > 0 else lognormal_size


def synthetic_client(cfg: SyntheticConfig, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``k``'s samples: ``x`` float32 (n, num_features) and ``y`` int64 (n,)."""
    d, c = cfg.num_features, cfg.num_classes
    rng = numpy_rng(seed, "synthetic", k)
    n = _client_size(cfg, rng)
    if cfg.iid:
        shared = numpy_rng(seed, "synthetic:shared")
        w = shared.normal(0.0, 1.0, (d, c))
        b = shared.normal(0.0, 1.0, c)
        v = np.zeros(d)
    else:
        u = rng.normal(0.0, cfg.alpha)
        big_b = rng.normal(0.0, cfg.beta)
        v = rng.normal(big_b, 1.0, d)
        w = rng.normal(u, 1.0, (d, c))
        b = rng.normal(u, 1.0, c)
    x = v + rng.standard_normal((n, d)) * _feature_std(d)
    y = np.argmax(x @ w + b, axis=1).astype(np.int64)
    return x.astype(np.float32), y


def generate_synthetic(cfg: SyntheticConfig, num_clients: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Clients ``0 .. num_clients-1`` concatenated: ``x`` float32, ``y`` int64 and the offsets of each client's rows
    (client k: rows ``offsets[k]:offsets[k+1]``); see the module docstring. The arrays are allocated once at
    their final size (the sizes are each stream's first draw) and filled client by client, so generating 10,000
    clients holds one copy of the data, not a list of per-client arrays beside their concatenation."""
    sizes = [_client_size(cfg, numpy_rng(seed, "synthetic", k)) for k in range(num_clients)]
    offsets = [0, *np.cumsum(sizes, dtype=np.int64).tolist()]
    x = np.empty((offsets[-1], cfg.num_features), dtype=np.float32)
    y = np.empty(offsets[-1], dtype=np.int64)
    for k in range(num_clients):
        x[offsets[k] : offsets[k + 1]], y[offsets[k] : offsets[k + 1]] = synthetic_client(cfg, k, seed)
    return x, y, offsets
