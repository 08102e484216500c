"""Flower tests compare deployed weights with the simulator's bit for bit, so the simulator side computes with
the ClientApp's one torch thread (tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _simulator_on_one_thread(one_torch_thread):
    yield
