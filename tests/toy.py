"""Tiny hand-made federations for tests (independent of the data package)."""

from __future__ import annotations

import torch
from torch import nn

from fedarena.core.types import SGD, FederatedData
from fedarena.tasks import Net, Task, make_task


def federation(sizes_train, sizes_test, features=4, classes=3, seed=0) -> FederatedData:
    """Gaussian blobs whose class means shift per client (a little non-IID)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, features, generator=g) * 2
    xs, ys, xt, yt = [], [], [], []
    for k, (n, m) in enumerate(zip(sizes_train, sizes_test)):
        for n_, xl, yl in ((n, xs, ys), (m, xt, yt)):
            y = torch.randint(0, classes, (n_,), generator=g)
            x = means[y] + 0.3 * k + torch.randn(n_, features, generator=g)
            xl.append(x)
            yl.append(y)

    def offsets(sizes):
        out = [0]
        for s in sizes:
            out.append(out[-1] + s)
        return tuple(out)

    return FederatedData(
        name="toy", client_ids=tuple(str(i) for i in range(len(sizes_train))),
        x_train=torch.cat(xs), y_train=torch.cat(ys), train_offsets=offsets(sizes_train),
        x_test=torch.cat(xt), y_test=torch.cat(yt), test_offsets=offsets(sizes_test),
        num_classes=classes, partition="toy",
    )


def classification_task(data: FederatedData, model="mlp", lr=0.1, batch_size=5, epochs=1, norm="none") -> Task:
    return make_task(model, data.input_shape, data.num_classes, SGD(epochs, batch_size, lr), hidden=8, norm=norm)


def linear_regression_task(lr=0.1, batch_size=1, epochs=1) -> Task:
    """y = w x with MSE loss and one weight named head.weight: gradients are checkable by hand."""
    module = Net(nn.Identity(), nn.Linear(1, 1, bias=False))
    module.requires_grad_(False)
    return Task("linreg", module, lambda out, y: ((out - y) ** 2).mean(), SGD(epochs, batch_size, lr))
