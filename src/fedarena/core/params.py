"""Operations on Params (`dict[str, Tensor]`): split by a key filter, merge, weighted mean."""

from __future__ import annotations

from typing import Iterable, Sequence, cast

import torch

from fedarena.core.types import KeyFilter, Params, Upload


def split(params: Params, personal: KeyFilter) -> tuple[Params, Params]:
    """(shared, personal) parts of `params`."""
    shared = {k: v for k, v in params.items() if not personal(k)}
    mine = {k: v for k, v in params.items() if personal(k)}
    return shared, mine


def shared_part(params: Params, personal: KeyFilter) -> Params:
    return split(params, personal)[0]


def personal_part(params: Params, personal: KeyFilter) -> Params:
    return split(params, personal)[1]


def merge(*parts: Params) -> Params:
    """Later parts win on duplicate keys."""
    out: Params = {}
    for part in parts:
        out.update(part)
    return out


def clone(params: Params) -> Params:
    return {k: v.detach().clone() for k, v in params.items()}


def weighted_mean(params_list: Sequence[Params], weights: Sequence[float]) -> Params:
    """sum_k w_k p_k / sum_k w_k, key by key, accumulated in float64 in a fixed order."""
    if not params_list:
        raise ValueError("weighted_mean of no params")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weighted_mean needs a positive total weight")
    keys = params_list[0].keys()
    out: Params = {}
    for k in keys:
        acc = torch.zeros(params_list[0][k].shape, dtype=torch.float64, device=params_list[0][k].device)
        for p, w in zip(params_list, weights):
            acc.add_(p[k], alpha=float(w) / total)  # computed in float64 (acc's dtype), no temporaries
        out[k] = acc.to(params_list[0][k].dtype)
    return out


def sq_distance(a: Params, b: Params, keys: Iterable[str]) -> torch.Tensor:
    """||a - b||^2 summed over `keys` (differentiable in `a`)."""
    return cast(torch.Tensor, sum(((a[k] - b[k]) ** 2).sum() for k in keys))  # sum's int start: 0 + tensor


def nbytes(params: Params) -> int:
    return sum(v.numel() * v.element_size() for v in params.values())


def in_client_order(uploads: dict[int, Upload]) -> dict[int, Upload]:
    """Uploads sorted by client, whatever order they arrived in (a Flower runtime receives them by completion):
    the aggregate's float sums must not depend on arrival order."""
    return dict(sorted(uploads.items()))


def finite(params: Params) -> bool:
    """Whether every floating-point value of `params` is finite (a diverged model has NaN or Inf)."""
    return all(bool(torch.isfinite(v).all()) for v in params.values() if v.is_floating_point())


def same_params(a: Params, b: Params) -> bool:
    """The same keys holding equal tensors (the same tensor objects, or equal values, dtypes and shapes)."""
    return a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])) for k in a)
