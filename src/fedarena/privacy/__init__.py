"""Privacy for federated rounds: secure aggregation and differential privacy (accounting via dp-accounting)."""
