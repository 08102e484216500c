"""`run.device` (`--device cpu|cuda|cuda:N|auto`, core/device.py): resolving it, moving values, and what a run does
with it. This machine has no GPU: the CUDA comparison at the end is skipped unless `torch.cuda.is_available()`."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.core.device import CPU, resolve_device, to_device, valid_device
from fedarena.core.types import Broadcast, ClientState, FedarenaError, FederatedData, Upload

CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
SMALL = ["--data", "digits", "--clients", "2", "--rounds", "2", "--model", "mlr", "--seed", "1",
         "--algorithms", "fedavg,fedper,ditto,local"]


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda0", "cpu:0", "", " cpu", "mps"])
def test_bad_spellings_are_refused_naming_the_valid_ones(name):
    assert not valid_device(name)
    with pytest.raises(FedarenaError, match="unknown run.device .*valid: cpu, cuda, cuda:N, auto"):
        resolve_device(name)
    with pytest.raises(FedarenaError, match="unknown run.device"):
        cfg.build(None, {"run": {"device": name}}, [])


def test_cpu_auto_and_cuda_n():
    assert all(valid_device(n) for n in ("cpu", "cuda", "auto", "cuda:0", "cuda:12"))
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")


@no_cuda
def test_cuda_without_cuda_is_refused_naming_the_problem():
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(FedarenaError, match=f"run.device={name}: this machine has no CUDA device"):
            resolve_device(name)


def test_cuda_n_beyond_the_devices_is_refused(monkeypatch):
    """With one CUDA device (simulated: nothing is allocated), cuda and cuda:0 resolve and cuda:1 is refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(FedarenaError, match=r"run.device=cuda:1: this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:1")


def _data() -> FederatedData:
    x, y = torch.randn(6, 3), torch.arange(6) % 2
    return FederatedData("toy", ("a", "b"), x, y, (0, 3, 6), x[:4], y[:4], (0, 2, 4), 2, "toy", {"k": [1]},
                         x[:2], y[:2], (0, 1, 2))


def test_to_device_is_the_identity_where_the_value_already_is():
    data, shared = _data(), {"w": torch.ones(2)}
    values = [data, data.client(1), Broadcast(params=shared), (Upload(params=shared, num_samples=3, metrics={"m": 1.0}),
                                                                  ClientState(extra={"a": torch.tensor(0.5)})), None, 3]
    for value in values:
        assert to_device(value, CPU) is value


def test_to_device_moves_every_tensor_and_shares_one_copy():
    """To the meta device (no data, any machine): every tensor of a FederatedData and of messages moves, the rest is
    kept; a tensor two values hold is copied once (`memo`)."""
    meta, data = torch.device("meta"), _data()
    moved = to_device(data, meta)
    for field in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val"):
        assert getattr(moved, field).device == meta and getattr(moved, field).shape == getattr(data, field).shape
    assert (moved.client_ids, moved.train_offsets, moved.val_offsets, moved.details) == (
        data.client_ids, data.train_offsets, data.val_offsets, data.details)
    assert data.x_train.device == CPU  # the original is untouched
    shared, memo = torch.ones(4), {}
    a = to_device(Broadcast(params={"w": shared}), meta, memo)
    b = to_device((Upload(params={"w": shared}, num_samples=2), ClientState(params={"v": torch.zeros(1)})), meta, memo)
    assert a.params["w"] is b[0].params["w"] and a.params["w"].device == meta
    assert b[0].num_samples == 2 and b[1].params["v"].device == meta


def _compare(tmp_path, name, *extra):
    out = tmp_path / name
    result = CliRunner().invoke(app, ["compare", *SMALL, *extra, "--out", str(out)])
    return out, result


def _numbers(out):
    """summary.json without timings and without the run.device it was given."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if "seconds" not in k}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    summary = json.loads((out / "summary.json").read_text())
    del summary["config"]["run"]["device"]
    return strip(summary)


@no_cuda
def test_auto_resolves_to_cpu_here_and_gives_the_cpu_numbers_bit_for_bit(tmp_path, one_torch_thread):
    cpu, result = _compare(tmp_path, "cpu", "--device", "cpu")
    assert result.exit_code == 0, result.output
    auto, result = _compare(tmp_path, "auto", "--device", "auto")
    assert result.exit_code == 0, result.output
    assert _numbers(auto) == _numbers(cpu)
    summary = json.loads((auto / "summary.json").read_text())
    assert summary["config"]["run"]["device"] == "auto"  # as given; the runs record what it became
    assert {r["engine"]["device"] for r in summary["runs"]} == {"cpu"}
    assert 'device = "auto"' in (auto / "config.toml").read_text()
    assert 'device = "cpu"' in (cpu / "config.toml").read_text()
    again, result = _compare(tmp_path, "again", "--config", str(auto / "config.toml"))  # config.toml reruns it
    assert result.exit_code == 0, result.output
    assert _numbers(again) == _numbers(auto)


@no_cuda
@pytest.mark.parametrize("command", [
    ["compare", *SMALL, "--device", "cuda"],
    ["compare", *SMALL, "--device", "cuda:1", "--engine", "reference"],
    ["sweep", "--quick", "--device", "cuda"],
    ["sweep", "--epsilons", "1", "--device", "cuda"],
    ["deploy", "--local", "2", "--device", "cuda"],
])
def test_cuda_without_cuda_exits_2_before_anything_is_written(command, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [*command, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "this machine has no CUDA device" in result.output and "use --device cpu or --device auto" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_bad_device_flag_exits_2_naming_the_key(tmp_path):
    result = CliRunner().invoke(app, ["compare", *SMALL, "--device", "gpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "unknown run.device 'gpu'" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (the project has not run this on a GPU yet)")
@pytest.mark.parametrize("engine", ["reference", "vectorized"])
def test_cuda_compare_matches_cpu(engine, tmp_path):
    """A small comparison on cuda gives the cpu run's numbers within float32 rounding: the same bytes, every client's
    final accuracy within a few test samples, the mean within 0.02, the final models within 1e-4."""
    from safetensors.torch import load_file

    from fedarena.experiments.compare import run_compare

    def run(device):
        config = cfg.build(None, {
            "data": {"name": "digits", "num_clients": 6, "new_clients": 0.2}, "model": {"name": "mlp"},
            "train": {"rounds": 3, "clients_per_round": 4, "local_epochs": 1, "batch_size": 16},
            "run": {"seed": 2, "engine": engine, "device": device, "algorithms": [
                "fedavg", "fedprox", "scaffold", "fedper", "ditto", "pfedme", "apfl", "ifca", "local", "centralized"]},
        }, [])
        out = tmp_path / f"{engine}-{device}"
        return out, run_compare(config, out)

    (cpu_dir, cpu), (gpu_dir, gpu) = run("cpu"), run("cuda")
    assert {r["engine"]["device"] for r in gpu["runs"]} == {"cuda"}
    for a, b in zip(cpu["runs"], gpu["runs"], strict=True):
        assert a["algorithm"] == b["algorithm"] and a["bytes"] == b["bytes"]
        for client, acc in a["final"]["personal_acc_per_client"].items():  # ~60 test samples a client: 3 samples
            assert abs(acc - b["final"]["personal_acc_per_client"][client]) <= 0.05 + 1e-9, (a["algorithm"], client)
        assert abs(a["final"]["personal_acc_mean"] - b["final"]["personal_acc_mean"]) <= 0.02, a["algorithm"]
        models = cpu_dir / "models" / a["algorithm"]
        for path in models.glob("*.safetensors"):
            ours, theirs = load_file(path), load_file(gpu_dir / "models" / a["algorithm"] / path.name)
            assert all(torch.allclose(ours[k], theirs[k], atol=1e-4, rtol=0) for k in ours), (a["algorithm"], path.name)
