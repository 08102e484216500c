"""The character LSTM of LEAF's Shakespeare task, written with its own matmuls so that it vmaps.

LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv 1812.01097) and the FedAvg paper
(McMahan et al. 2017, arXiv 1602.05629, Sec. 3) predict the next character of a line with an
8-dimensional character embedding, two LSTM layers of 256 units and a linear layer from the last step's
hidden state to the vocabulary. Inputs are int64 character indices shaped (N, seq_len); outputs are
logits (N, vocab).

Each layer is the standard LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000),
exactly as ``torch.nn.LSTM`` documents it, gates in PyTorch's order (i, f, g, o):

    i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
    f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

with h_0 = c_0 = 0. ``w_ih`` stacks (W_ii, W_if, W_ig, W_io) as ``nn.LSTM``'s ``weight_ih_l0`` does (4H x in),
``w_hh`` stacks the W_h* (4H x H), ``b_ih``/``b_hh`` the biases: a layer's weights copied into ``nn.LSTM``
give its outputs. ``nn.LSTM`` itself calls a fused kernel that neither ``torch.func.vmap`` nor
``functional_call`` over stacked weights can batch; written out, a layer is two ``linear`` calls and
elementwise ops per step, all of which vmap (the input projection of every step is one matmul before the
loop, as cuDNN does).

Init (from the task's generator, ``tasks._init_like``): every LSTM weight and bias uniform(-1/sqrt(H), 1/sqrt(H))
as ``nn.LSTM`` does, the embedding N(0, 1) as ``nn.Embedding`` does, the head as every ``nn.Linear``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EMBED = 8  # LEAF's embedding size
HIDDEN = 256  # LEAF's LSTM width


class LSTMLayer(nn.Module):
    """One LSTM layer over a whole sequence, batch first: (N, T, in) -> (N, T, H)."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_ih = nn.Parameter(torch.empty(4 * hidden, input_size))
        self.w_hh = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.b_ih = nn.Parameter(torch.empty(4 * hidden))
        self.b_hh = nn.Parameter(torch.empty(4 * hidden))
        bound = 1.0 / math.sqrt(hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = F.linear(x, self.w_ih, self.b_ih)  # every step's W_i* x_t + b_i* at once: (N, T, 4H)
        h = projected.new_zeros(projected.shape[0], self.hidden)
        c = h
        out = []
        # unbind, not projected[:, t]: indexing's backward writes each step's gradient into a zero tensor of the
        # whole sequence's size and sums T of them; unbind's backward stacks the T gradients once
        for step in projected.unbind(1):
            gates = step + F.linear(h, self.w_hh, self.b_hh)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1)


class LSTMBody(nn.Module):
    """Embedding and two LSTM layers; returns the last step's hidden state (N, H)."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.lstm1 = LSTMLayer(EMBED, hidden)
        self.lstm2 = LSTMLayer(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm2(self.lstm1(self.embed(x)))[:, -1]
