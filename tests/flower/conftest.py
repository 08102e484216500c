"""Flower tests compare deployed weights with the simulator's bit for bit. The ClientApp computes with one torch
thread (client_app.py); BLAS reductions split over a different number of threads round differently in the last
bit, so the simulator side of these tests computes with one thread too."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
