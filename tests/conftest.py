"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: tiny models train ~10x faster on one thread than on a contended pool
    (2-core CI), and the Flower tests compare with ClientApps that compute on one thread (client_app.py) —
    BLAS reductions split over another number of threads round differently in the last bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
