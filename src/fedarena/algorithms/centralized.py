"""Centralized training: one model trained on the pooled train data of every client (the ceiling).

Not federated: the engine gives this algorithm a single pseudo-client holding all clients' train
data, trains it every round with the comparison's local SGD (so one round = E epochs over the pooled
data), sends no message (0 bytes) and evaluates the one model on every client's test split. Reported
with family `baseline` and marked `federated: false` in summary.json.
"""

from __future__ import annotations

from fedarena.core.algorithm import algorithm


@algorithm("centralized", "baseline", "pooled-data ceiling (not federated)", federated=False,
           server_step="mean", per_sample_risk=True, communicates=False)
class Centralized:
    """FedAvg's steps on one pseudo-client that holds all clients' train data."""
