"""How heterogeneous a federated split is, from the clients' train label distributions."""

from __future__ import annotations

import numpy as np

from fedarena.core.types import FederatedData

DEFINITIONS = {
    "effective_classes_mean": (
        "mean over clients of exp(Shannon entropy, natural log) of the client's train label "
        "distribution: the Hill number of order 1, from 1 (one class) to num_classes (uniform)"
    ),
    "js_divergence_mean": (
        "mean over clients of the Jensen-Shannon divergence (log base 2, so in [0, 1]) between the "
        "client's train label distribution and the pooled train label distribution of all clients"
    ),
}


def _entropy(p: np.ndarray, base: float) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(base))


def effective_classes(counts: np.ndarray) -> float:
    """exp of the Shannon entropy of the distribution ``counts / counts.sum()`` (Hill number 1)."""
    return float(np.exp(_entropy(counts / counts.sum(), np.e)))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two distributions (in [0, 1])."""
    m = (p + q) / 2
    return max(0.0, _entropy(m, 2) - (_entropy(p, 2) + _entropy(q, 2)) / 2)


def _plain(value: object) -> object:
    """A JSON-friendly copy: numpy scalars to Python numbers, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def summarize(fd: FederatedData) -> dict:
    """Per-client train label counts and sizes, plus two label-skew statistics (see
    ``DEFINITIONS``); every value is a plain int, float, str, list or dict. Clients with no
    train samples are left out of the two means."""
    y = fd.y_train.numpy()
    counts = np.stack(
        [np.bincount(y[a:b], minlength=fd.num_classes) for a, b in zip(fd.train_offsets[:-1], fd.train_offsets[1:])]
    )
    nonempty = counts[counts.sum(axis=1) > 0]
    pooled = counts.sum(axis=0) / max(int(counts.sum()), 1)
    effective = [effective_classes(c) for c in nonempty]
    js = [js_divergence(c / c.sum(), pooled) for c in nonempty]
    return {
        "partition": fd.partition,
        "details": _plain(dict(fd.details)),
        "num_clients": fd.num_clients,
        "num_classes": fd.num_classes,
        "train_sizes": np.diff(fd.train_offsets).tolist(),
        "test_sizes": np.diff(fd.test_offsets).tolist(),
        "label_counts": counts.tolist(),
        "effective_classes_mean": float(np.mean(effective)) if effective else 0.0,
        "js_divergence_mean": float(np.mean(js)) if js else 0.0,
        "definitions": dict(DEFINITIONS),
    }
