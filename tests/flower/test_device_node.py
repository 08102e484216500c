"""A SuperNode resolves the run config's `run.device` itself: one without the device refuses its describe (and every
other message) naming the problem; one on the CPU describes its client as before. flower-sim asks Ray for a share of
a GPU only where the device is cuda."""

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedarena import config as cfg
from fedarena.core.types import FedarenaError
from fedarena.experiments.flower_sim import Resources, federation_config, gpu_share
from fedarena.flower import client_app, common, messages, records


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps messages with the process's task identity (set by its runtimes); set one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _describe(device: str):
    conf = cfg.build(None, {"data": {"name": "synthetic", "num_clients": 4}, "run": {"device": device}}, [])
    context = Context(run_id=7, node_id=11, node_config={"partition-id": 1, "num-partitions": 4}, state=RecordDict(),
                      run_config={"config": common.config_text(conf)})
    msg = Message(records.content({messages.SEED: 1}), dst_node_id=11, message_type=messages.DESCRIBE)
    return client_app.describe(msg, context)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a node without CUDA")
def test_a_node_without_cuda_refuses_its_describe_naming_the_problem(task_identity):
    with pytest.raises(FedarenaError, match="run.device=cuda: this machine has no CUDA device"):
        _describe("cuda")


def test_a_cpu_node_describes_its_client(task_identity):
    for device in ("cpu", "auto"):
        fields = records.fields(_describe(device))
        assert fields[messages.NUM_TRAIN] == sum(fields[messages.LABEL_COUNTS]) > 0


def test_flower_sim_asks_ray_for_a_gpu_share_only_on_cuda(monkeypatch):
    conf = cfg.build(None, {"run": {"device": "cpu"}}, [])
    assert gpu_share(conf, Resources()) == Resources()
    assert "client-resources-num-gpus=0.0" in federation_config(4, Resources())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, simulated (nothing is allocated)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = cfg.build(None, {"run": {"device": "cuda"}}, [])
    share = gpu_share(cuda, Resources(client_cpus=1, num_cpus=8))
    assert share.client_gpus == 0.125 and "client-resources-num-gpus=0.125" in federation_config(4, share)
    with pytest.raises(FedarenaError, match="use --device cuda"):
        gpu_share(cfg.build(None, {"run": {"device": "cuda:1"}}, []), Resources())
