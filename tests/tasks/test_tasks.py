"""Models: shapes, named body/head submodules, seeded initialisation."""

import pytest
import torch

from fedarena.core.types import SGD, FedarenaError
from fedarena.tasks import make_task


@pytest.mark.parametrize("model,shape", [("mlr", (1, 8, 8)), ("mlp", (60,)), ("cnn", (1, 8, 8)), ("cnn", (3, 28, 28))])
def test_forward_shape_and_named_parts(model, shape):
    task = make_task(model, shape, 10, SGD())
    params = task.init_params(torch.Generator().manual_seed(0))
    assert params.keys() == task.module.state_dict().keys()
    assert all(k.startswith(("body.", "head.")) for k in params)
    assert any(k.startswith("head.") for k in params)
    out = task.forward(params, torch.zeros(4, *shape))
    assert out.shape == (4, 10)


def test_init_is_seeded_and_bounded():
    task = make_task("mlp", (60,), 10, SGD(), hidden=200)
    a = task.init_params(torch.Generator().manual_seed(1))
    b = task.init_params(torch.Generator().manual_seed(1))
    c = task.init_params(torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])
    assert a["body.fc1.weight"].abs().max() <= 1 / 60**0.5  # PyTorch's default bound 1/sqrt(fan_in)


def test_cnn_refuses_vector_inputs():
    with pytest.raises(FedarenaError, match="image inputs"):
        make_task("cnn", (60,), 10, SGD())
