"""The algorithm registry: name -> algorithm dataclass. Explicit, no import-time discovery."""

from fedarena.algorithms.centralized import Centralized
from fedarena.algorithms.fedavg import FedAvg
from fedarena.algorithms.fedavg_ft import FedAvgFT
from fedarena.algorithms.fedprox import FedProx
from fedarena.algorithms.local import Local

REGISTRY = {
    cls.name: cls
    for cls in (FedAvg, FedProx, Local, FedAvgFT, Centralized)
}

__all__ = ["REGISTRY"]
