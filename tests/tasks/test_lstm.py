"""The lstm (LEAF's Shakespeare model): shapes, named parts, seeded init, the recurrence against torch.nn.LSTM,
learning, per-sample gradients for DP-SGD, integer inputs where the server stands in for the data."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedarena.core.local_train import local_sgd
from fedarena.core.types import SGD, FedarenaError
from fedarena.tasks import build_module, input_dtype, lstm_width, make_task

VOCAB, SEQ, H = 12, 10, 16
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: ~10x faster than on a contended pool


def small(hidden=H, sgd=SGD()):
    return make_task("lstm", (SEQ,), VOCAB, sgd, hidden=hidden)


def test_forward_shape_keys_and_dtype():
    task = small()
    params = task.init_params(torch.Generator().manual_seed(0))
    assert list(params) == [
        "body.embed.weight",
        *[f"body.lstm{i}.{k}" for i in (1, 2) for k in ("w_ih", "w_hh", "b_ih", "b_hh")],
        "head.weight", "head.bias",
    ]
    assert params["body.embed.weight"].shape == (VOCAB, 8)
    assert params["body.lstm1.w_ih"].shape == (4 * H, 8) and params["body.lstm2.w_ih"].shape == (4 * H, H)
    assert params["body.lstm1.w_hh"].shape == (4 * H, H) and params["head.weight"].shape == (VOCAB, H)
    assert task.parameter_names == frozenset(params)
    x = torch.randint(0, VOCAB, (5, SEQ))
    assert task.forward(params, x).shape == (5, VOCAB)
    assert task.forward(params, torch.randint(0, VOCAB, (3, 4))).shape == (3, VOCAB)  # any sequence length
    assert input_dtype("lstm") == torch.int64 and input_dtype("mlp") == torch.float32


def test_width_is_leafs_256_unless_hidden_is_given():
    full = make_task("lstm", (80,), 65, SGD())
    assert full.module.state_dict()["body.lstm2.w_hh"].shape == (4 * 256, 256)
    assert lstm_width(200) == 256 and lstm_width(64) == 64
    assert make_task("mlp", (60,), 10, SGD()).module.state_dict()["body.fc1.weight"].shape == (200, 60)  # unchanged


def test_refuses_what_it_cannot_take():
    with pytest.raises(FedarenaError, match="seq_len"):
        build_module("lstm", (1, 8, 8), VOCAB)
    with pytest.raises(FedarenaError, match="norm"):
        build_module("lstm", (SEQ,), VOCAB, norm="bn")


def test_init_is_seeded_and_follows_pytorchs_defaults():
    task = make_task("lstm", (SEQ,), 40, SGD(), hidden=64)
    a = task.init_params(torch.Generator().manual_seed(1))
    b = task.init_params(torch.Generator().manual_seed(1))
    c = task.init_params(torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)
    for k in a:
        if ".lstm" in k:  # nn.LSTM: uniform(-1/sqrt(H), 1/sqrt(H)) on every weight and bias
            assert a[k].abs().max() <= 1 / 64**0.5 and a[k].abs().max() > 0.9 / 64**0.5
    emb = a["body.embed.weight"]  # nn.Embedding: N(0, 1)
    assert abs(float(emb.mean())) < 0.2 and 0.8 < float(emb.std()) < 1.2
    assert a["head.weight"].abs().max() <= 1 / 64**0.5


def _body_params(params, prefix="body."):
    return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


def test_recurrence_equals_torch_lstm():
    """Given the same weights, the two written-out layers give nn.LSTM's hidden state at every step."""
    task = small()
    params = task.init_params(torch.Generator().manual_seed(3))
    reference = nn.LSTM(8, H, num_layers=2, batch_first=True)
    with torch.no_grad():
        for layer in (0, 1):
            for mine, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                getattr(reference, f"{theirs}_l{layer}").copy_(params[f"body.lstm{layer + 1}.{mine}"])
        x = torch.randint(0, VOCAB, (6, SEQ), generator=torch.Generator().manual_seed(4))
        embedded = nn.functional.embedding(x, params["body.embed.weight"])
        want, _ = reference(embedded)
        body = task.module.body
        first = functional_call(body.lstm1, _body_params(params, "body.lstm1."), (embedded,))
        every_step = functional_call(body.lstm2, _body_params(params, "body.lstm2."), (first,))
        assert every_step.shape == want.shape == (6, SEQ, H)
        assert torch.allclose(every_step, want, atol=1e-6, rtol=0)
        last = functional_call(body, _body_params(params), (x,))  # the body hands the last step to the head
        assert torch.allclose(last, want[:, -1], atol=1e-6, rtol=0)


def _cyclic(n, seed=0):
    """Windows of a text that cycles through the vocabulary: the next character is fully predictable."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    seq = (start + torch.arange(SEQ + 1)) % VOCAB
    return seq[:, :SEQ], seq[:, SEQ]


def test_loss_falls_on_a_tiny_next_character_task():
    task = small(sgd=SGD(1, 8, 1.0))
    params = task.init_params(torch.Generator().manual_seed(0))
    x, y = _cyclic(96)
    before = float(task.loss(params, x, y))
    trained, _, _ = local_sgd(lambda p, *, batch: task.loss(p, *batch), params, task.parameter_names,
                              x, y, task.sgd, torch.Generator().manual_seed(1), epochs=5)
    after = float(task.loss(trained, x, y))
    assert before > 2.0 and after < 0.6 * before


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_per_sample_gradients_for_dp_sgd():
    """Opacus (DP-SGD) takes the embedding and linear layers with its own rules and the LSTM layers through
    functorch; per-sample gradients summed equal the batch gradient, on int64 inputs."""
    from opacus import GradSampleModule

    task = small()
    params = task.init_params(torch.Generator().manual_seed(5))
    model = build_module("lstm", (SEQ,), VOCAB, H)
    model.load_state_dict(params)
    x, y = _cyclic(7, seed=2)
    net = GradSampleModule(model, loss_reduction="sum")
    nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    for name, p in model.named_parameters():
        assert p.grad_sample.shape == (7, *p.shape)
        assert torch.allclose(p.grad_sample.sum(0), p.grad, atol=1e-5), name
    net._close()


def test_flower_stand_in_features_are_indices():
    from fedarena import config as cfg
    from fedarena.flower.described import Described, stand_in

    config = dataclasses.replace(cfg.Config(), model=cfg.ModelConfig(name="lstm"))
    described = [Described(i, str(i), i, 3, 2, VOCAB, (1, 2), (SEQ,)) for i in range(2)]
    data = stand_in(config, described, {})
    assert data.x_train.dtype == torch.int64 and data.x_train.shape == (6, SEQ)
    assert data.x_test.dtype == torch.int64
