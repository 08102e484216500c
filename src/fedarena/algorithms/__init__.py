"""The algorithm registry: name -> algorithm dataclass. Explicit, no import-time discovery."""

from typing import Any

from fedarena.algorithms.apfl import APFL
from fedarena.algorithms.centralized import Centralized
from fedarena.algorithms.ditto import Ditto
from fedarena.algorithms.fedadagrad import FedAdagrad
from fedarena.algorithms.fedadam import FedAdam
from fedarena.algorithms.fedavg import FedAvg
from fedarena.algorithms.fedavg_ft import FedAvgFT
from fedarena.algorithms.fedavgm import FedAvgM
from fedarena.algorithms.fedbn import FedBN
from fedarena.algorithms.fedper import FedPer
from fedarena.algorithms.fedprox import FedProx
from fedarena.algorithms.fedrep import FedRep
from fedarena.algorithms.fedyogi import FedYogi
from fedarena.algorithms.ifca import IFCA
from fedarena.algorithms.lg_fedavg import LGFedAvg
from fedarena.algorithms.local import Local
from fedarena.algorithms.mocha import Mocha
from fedarena.algorithms.per_fedavg import PerFedAvg
from fedarena.algorithms.pfedme import PFedMe
from fedarena.algorithms.scaffold import Scaffold

_CLASSES: tuple[type[Any], ...] = (
    FedAvg, FedProx, Local, FedAvgFT, Centralized, FedPer, FedRep, LGFedAvg, FedBN, Scaffold, FedAvgM, FedAdam,
    FedYogi, FedAdagrad, IFCA, Mocha, Ditto, APFL, PerFedAvg, PFedMe)
# type[Any]: `@algorithm` adds the contract's steps and declarations at run time (core/algorithm.py)
REGISTRY: dict[str, type[Any]] = {cls.name: cls for cls in _CLASSES}

__all__ = ["REGISTRY"]
