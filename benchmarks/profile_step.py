"""One local SGD step of a bench workload's model, client by client against vmapped, profiled (issue 17's note).

    python benchmarks/profile_step.py cnn-28      # LEAF's FEMNIST CNN, 5 clients, batch 20
    python benchmarks/profile_step.py lstm        # LEAF's Shakespeare LSTM, 10 clients, batch 10, 80 characters
    python benchmarks/profile_step.py mlp-100     # MLP 60-200-200-10, 100 clients, batch 20; eager vs torch.compile

Each prints the median milliseconds of a step both ways (the same weights, data and loss as the engines': the
vmapped step differentiates the sum of the clients' losses, as `core.batched` does) and torch.profiler's top
operators. Timings are this machine's, at 2 torch threads; run it on an idle machine.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fedarena.tasks import build_module

SHAPES = {  # model, input shape, classes, hidden, clients, batch, integer inputs
    "cnn-28": ("cnn", (1, 28, 28), 62, 2048, 5, 20, False),
    "lstm": ("lstm", (80,), 80, 200, 10, 10, True),
    "mlp-100": ("mlp", (60,), 10, 200, 100, 20, False),
}


def median_ms(step: Callable[[], object], n: int = 10) -> float:
    step()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1000


def main(name: str) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, shape, classes, hidden, clients, batch, integer = SHAPES[name]
    net = build_module(model, shape, classes, hidden)
    stacked = {k: v.detach().expand(clients, *v.shape).contiguous() for k, v in net.named_parameters()}
    x = torch.randint(0, classes, (clients, batch, *shape)) if integer else torch.randn(clients, batch, *shape)
    y = torch.randint(0, classes, (clients, batch))

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (xb,)), yb)

    def client_by_client() -> None:
        for c in range(clients):
            leaves = {k: v[c].detach().requires_grad_(True) for k, v in stacked.items()}
            torch.autograd.grad(loss(leaves, x[c], y[c]), list(leaves.values()))

    def batched(losses: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            leaves = {k: v.detach().requires_grad_(True) for k, v in stacked.items()}
            torch.autograd.grad(losses(leaves, x, y).sum(), list(leaves.values()))

        return step

    vmapped = batched(vmap(loss))
    print(f"{name}: client by client {median_ms(client_by_client):.1f} ms/step, vmapped {median_ms(vmapped):.1f} ms/step")
    if name == "mlp-100":
        start = time.perf_counter()
        compiled = batched(torch.compile(vmap(loss), dynamic=False))
        compiled()
        print(f"torch.compile: {time.perf_counter() - start:.1f} s to compile, {median_ms(compiled):.1f} ms/step")
    for label, step in (("vmapped", vmapped), ("client by client", client_by_client)):
        with torch.profiler.profile() as prof:
            step()
        print(label)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: python benchmarks/profile_step.py {{{','.join(SHAPES)}}}")
    main(sys.argv[1])
