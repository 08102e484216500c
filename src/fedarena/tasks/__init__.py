"""Tasks: a model (with named `body` and `head` submodules), its loss, and the local SGD settings.

Models are used functionally: one stateless template module per task, parameters passed in as
``Params`` through ``torch.func.functional_call``. Personalization layers name their keys by the
``body.``/``head.`` prefixes.

- ``mlr``: multinomial logistic regression (body = flatten, head = one linear layer).
- ``mlp``: two hidden ReLU layers of width ``hidden`` (60-200-200-10 on synthetic, as in the
  FedProx/pFedMe experiments).
- ``cnn``: the CNN of McMahan et al. 2017 (AISTATS, arXiv 1602.05629, Sec. 3): two 5x5
  convolutions (32 and 64 channels) each followed by 2x2 max pooling, a 512-unit fully connected
  layer and a softmax head. Convolutions use padding 2 so the network fits small inputs (8x8 digits).
  ``hidden`` sets the fully connected layer's width when it is given (:func:`cnn_width`; 512 at its default):
  ``hidden=2048`` on 28x28x1 images with 62 classes is LEAF's FEMNIST CNN (Caldas et al. 2018, arXiv 1812.01097).
- ``lstm``: LEAF's Shakespeare model (next character; ``tasks/lstm.py``): an 8-dimensional embedding, two LSTM
  layers of ``hidden`` units (256 unless ``hidden`` is given: :func:`lstm_width`) and a linear head to the
  vocabulary (``num_classes``). Inputs are int64 character indices shaped (N, seq_len): ``input_shape`` is
  ``(seq_len,)`` (:func:`input_dtype`). Keys ``body.embed.weight``, ``body.lstm1.w_ih`` ... ``head.weight``.

``norm="bn"`` inserts BatchNorm after every hidden linear/conv layer (before the ReLU), named
``body.norm<i>``, so FedBN can keep exactly the normalization layers personal. Layers are named
(``body.fc1``, ``body.conv1``, ``body.norm1``, ``head``), never numbered by position.

Training forwards run the module in train mode (BatchNorm uses and updates batch statistics in the
params it is given), evaluation forwards in eval mode (running statistics). A train-mode batch of a
single sample cannot give batch statistics; such a batch is normalized with the running statistics.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from fedarena.core.types import SGD, FedarenaError, Params
from fedarena.tasks.lstm import HIDDEN as LSTM_HIDDEN
from fedarena.tasks.lstm import LSTMBody, LSTMLayer

DEFAULT_HIDDEN = 200  # `hidden`'s default (config's model.hidden): mlp's width
CNN_HIDDEN = 512  # the cnn's fully connected width when `hidden` is left at its default (McMahan et al. 2017)
INTEGER_INPUTS = frozenset({"lstm"})  # models whose inputs are int64 indices, not float features


@dataclass(frozen=True)
class Task:
    """What a client learns and how: model template, loss, local SGD settings."""

    name: str
    module: nn.Module = field(compare=False, repr=False)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(compare=False, repr=False)
    sgd: SGD = SGD()

    def forward(self, params: Params, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        self.module.train(train and x.shape[0] > 1)
        return functional_call(self.module, params, (x,))

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss on one batch (train-mode forward)."""
        return self.loss_fn(self.forward(params, x, train=True), y)

    @property
    def parameter_names(self) -> frozenset[str]:
        """Trainable keys; the other keys are buffers (BatchNorm statistics), never given gradients."""
        return frozenset(name for name, _ in self.module.named_parameters())

    def init_params(self, generator: torch.Generator) -> Params:
        """Fresh parameters drawn from `generator` (PyTorch's default init schemes, seeded)."""
        out = {}
        for name, tensor in self.module.state_dict().items():
            out[name] = _init_like(name, tensor, self.module, generator)
        return out


def _init_like(name: str, tensor: torch.Tensor, module: nn.Module, g: torch.Generator) -> torch.Tensor:
    """PyTorch's default init for Linear/Conv (kaiming-uniform a=sqrt(5)), LSTM (uniform(-1/sqrt(H), 1/sqrt(H))
    on every weight and bias) and Embedding (N(0, 1)), but from a given generator."""
    owner = module.get_submodule(name.rpartition(".")[0])
    if isinstance(owner, LSTMLayer):
        bound = 1.0 / math.sqrt(owner.hidden)
        return (torch.rand(tensor.shape, generator=g) * 2 - 1) * bound
    if isinstance(owner, nn.Embedding):
        return torch.randn(tensor.shape, generator=g)
    if isinstance(owner, (nn.Linear, nn.Conv2d)):
        weight = owner.weight
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        # kaiming_uniform_(a=sqrt(5)) on the weight and the bias bound both reduce to 1/sqrt(fan_in)
        return (torch.rand(tensor.shape, generator=g) * 2 - 1) * bound
    return tensor.detach().clone()  # buffers and norm parameters keep their defaults


class Net(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _layers(kind: str, sizes: list[tuple[int, int]], norm: str, start: int = 1) -> list[tuple[str, nn.Module]]:
    """Hidden layers fc<i>/conv<i> [+ norm<i>] + relu<i> (+ pool<i> for convolutions)."""
    out: list[tuple[str, nn.Module]] = []
    for i, (n_in, n_out) in enumerate(sizes, start=start):
        if kind == "fc":
            out.append((f"fc{i}", nn.Linear(n_in, n_out)))
        else:
            out.append((f"conv{i}", nn.Conv2d(n_in, n_out, 5, padding=2)))
        if norm == "bn":
            out.append((f"norm{i}", nn.BatchNorm1d(n_out) if kind == "fc" else nn.BatchNorm2d(n_out)))
        out.append((f"relu{i}", nn.ReLU()))
        if kind == "conv":
            out.append((f"pool{i}", nn.MaxPool2d(2)))
    return out


def lstm_width(hidden: int) -> int:
    """The LSTM's width for `hidden` (model.hidden): LEAF's 256 when `hidden` is left at its default (200,
    mlp's width), else `hidden` itself. (So model.hidden=200 cannot ask for an LSTM of exactly 200 units.)"""
    return LSTM_HIDDEN if hidden == DEFAULT_HIDDEN else hidden


def cnn_width(hidden: int) -> int:
    """The cnn's fully connected width for `hidden` (model.hidden): FedAvg's 512 when `hidden` is left at its
    default (200, mlp's width), else `hidden` itself (2048: LEAF's FEMNIST CNN). As for the lstm, a cnn of exactly
    200 units cannot be asked for; the default keeps every existing cnn at 512."""
    return CNN_HIDDEN if hidden == DEFAULT_HIDDEN else hidden


def input_dtype(model: str) -> torch.dtype:
    """What the model's inputs are: int64 indices (lstm) or float32 features (the others)."""
    return torch.int64 if model in INTEGER_INPUTS else torch.float32


def build_module(
    model: str, input_shape: tuple[int, ...], num_classes: int, hidden: int = DEFAULT_HIDDEN, norm: str = "none"
) -> nn.Module:
    if norm not in ("none", "bn"):
        raise FedarenaError(f"unknown model.norm '{norm}'; valid: none, bn")
    d = math.prod(input_shape)
    if model == "mlr":
        if norm != "none":
            raise FedarenaError("model mlr has no hidden layer to normalize; use model.norm=none")
        return Net(nn.Flatten(), nn.Linear(d, num_classes))
    if model == "mlp":
        layers = [("flatten", nn.Flatten()), *_layers("fc", [(d, hidden), (hidden, hidden)], norm)]
        return Net(nn.Sequential(OrderedDict(layers)), nn.Linear(hidden, num_classes))
    if model == "cnn":
        if len(input_shape) != 3:
            raise FedarenaError(
                f"model cnn needs image inputs shaped (channels, height, width); the data has {input_shape}"
            )
        c, h, w = input_shape
        flat = 64 * (h // 4) * (w // 4)
        if flat == 0:
            raise FedarenaError(f"model cnn needs images of at least 4x4, got {h}x{w}")
        convs = _layers("conv", [(c, 32), (32, 64)], norm)
        width = cnn_width(hidden)
        fc = _layers("fc", [(flat, width)], norm, start=3)
        body = nn.Sequential(OrderedDict([*convs, ("flatten", nn.Flatten()), *fc]))
        return Net(body, nn.Linear(width, num_classes))
    if model == "lstm":
        if norm != "none":
            raise FedarenaError("model lstm has no normalization layers; use model.norm=none")
        if len(input_shape) != 1:
            raise FedarenaError(
                f"model lstm needs character index sequences shaped (seq_len,); the data has {input_shape}"
            )
        width = lstm_width(hidden)
        return Net(LSTMBody(num_classes, width), nn.Linear(width, num_classes))
    raise FedarenaError(f"unknown model '{model}'; valid: mlr, mlp, cnn, lstm")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y)


def make_task(
    model: str, input_shape: tuple[int, ...], num_classes: int, sgd: SGD, hidden: int = DEFAULT_HIDDEN,
    norm: str = "none"
) -> Task:
    module = build_module(model, input_shape, num_classes, hidden, norm)
    module.requires_grad_(False)
    return Task(model, module, cross_entropy, sgd)


@torch.no_grad()
def evaluate(task: Task, params: Params, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[int, float]:
    """(number correct, summed loss) of `params` on (x, y)."""
    correct, loss = 0, 0.0
    for i in range(0, int(y.shape[0]), chunk):
        out = task.forward(params, x[i : i + chunk])
        loss += float(task.loss_fn(out, y[i : i + chunk])) * int(y[i : i + chunk].shape[0])
        correct += int((out.argmax(dim=1) == y[i : i + chunk]).sum())
    return correct, loss
