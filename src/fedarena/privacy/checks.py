"""What privacy refuses before any work, and why.

User-level DP and secure aggregation replace the server step by the weighted mean of the updates (plus noise),
so they apply to an algorithm only where that is all its server step needs (`server_step` in
`core.algorithm.MEAN_STEPS`) and where every shared parameter is a float (an integer cannot be averaged,
masked as a fixed-point real or noised). Central DP under SecAgg is accounted only as the Skellam mechanism
under Poisson sampling with the RDP accountant. DP-SGD's own conditions are `dpsgd.check_dpsgd`'s.
"""

from __future__ import annotations

from typing import Any

from fedarena.core.algorithm import MEAN_STEPS
from fedarena.core.types import FedarenaError
from fedarena.privacy.dpsgd import check_dpsgd


def enabled(settings: Any) -> bool:
    return settings.dp_clip > 0 or settings.secagg


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


def shared_numel(module: Any, algo: Any) -> int:
    """How many parameters `algo` shares of the model `module` (what a secure sum and its noise cover)."""
    return sum(v.numel() for k, v in module.state_dict().items() if not algo.personal(k))
