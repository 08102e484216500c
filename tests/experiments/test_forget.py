"""`fedarena forget`: exactness of retraining, no-op deletion, traces on disk, the probes, bad input."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from running import run_loop
from typer.testing import CliRunner

from fedarena import config as cfg
from fedarena.cli import app
from fedarena.experiments.compare import prepare, run_compare
from fedarena.experiments.forget.retrain import retrain
from fedarena.experiments.forget.run import forget
from fedarena.experiments.forget.source import Source
from fedarena.forget import probe
from fedarena.sim.engine import sample_clients

ROUNDS, CLIENTS, PER_ROUND = 4, 8, 3
ALGOS = "fedavg,fedper,ditto,local,centralized,scaffold"


def make_config(**sets):
    base = {"data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": CLIENTS},
            "train": {"rounds": ROUNDS, "clients_per_round": PER_ROUND}, "model": {"name": "mlr"},
            "run": {"algorithms": ALGOS, "seed": 3, "engine": "reference"}, "forget": {"keep": "all"}}
    for key, value in sets.items():
        section, name = key.split("__")
        base.setdefault(section, {})[name] = value
    return cfg.build(None, base, [])


def first_rounds(config):
    training = list(range(CLIENTS))
    first = {}
    for rnd in range(1, ROUNDS + 1):
        for c in sample_clients(config.run.seed, rnd, training, PER_ROUND):
            first.setdefault(c, rnd)
    return first


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = make_config()
    out = tmp_path_factory.mktemp("forget") / "run"
    run_compare(config, out)
    return out, config


def test_retrain_equals_a_fresh_run_without_the_client(run_dir):
    out, config = run_dir
    first = first_rounds(config)
    late = max(first, key=first.get)  # resumes from a mid-run checkpoint when it joined after round 1
    src = Source.load(out, [str(late)])
    for name in ("fedavg", "ditto", "scaffold"):
        outcome = retrain(src, name)
        assert outcome.rounds == ROUNDS - (first[late] - 1)
        fresh = run_loop(src.algo(name), src.task, src.data, rounds=ROUNDS, clients_per_round=PER_ROUND,
                              eval_every=ROUNDS, seed=config.run.seed, engine="reference", exclude=[late])
        for k in fresh.server.params:
            assert torch.equal(fresh.server.params[k], outcome.server.params[k]), (name, k)
        for k in fresh.server.extra:
            assert torch.equal(fresh.server.extra[k], outcome.server.extra[k]), (name, k)
        original = run_loop(src.algo(name), src.task, src.data, rounds=ROUNDS, clients_per_round=PER_ROUND,
                                 eval_every=ROUNDS, seed=config.run.seed, engine="reference")
        # nobody else's participation changes: the run that never had the client
        assert fresh.sampled == [[c for c in chosen if c != late] for chosen in original.sampled]
        for c, state in fresh.states.items():
            assert all(torch.equal(v, outcome.states[c].params[k]) for k, v in state.params.items()), (name, c)


def test_forgetting_a_client_that_never_trained_changes_nothing(tmp_path):
    config = make_config(train__rounds=1, run__algorithms="fedavg,fedper")
    idle = next(c for c in range(CLIENTS) if c not in first_rounds(config) or first_rounds(config)[c] > 1)
    run_compare(config, tmp_path / "run")
    forget(tmp_path / "run", [str(idle)], ["retrain", "federaser"], tmp_path / "out")
    before, after = digest(tmp_path / "run" / "models"), digest(tmp_path / "out" / "models")
    assert after == {k: v for k, v in before.items() if f"client-{idle}." not in k}
    rows = json.loads((tmp_path / "out" / "forget.json").read_text())["runs"]
    assert all(r["rounds"] == 0 and r["bytes"] == 0 for r in rows)


def test_pfl_deletion_leaves_no_trace_and_the_source_is_untouched(run_dir, tmp_path):
    out, config = run_dir
    victim = str(min(first_rounds(config), key=first_rounds(config).get))
    before = digest(out)
    result = forget(out, [victim], ["retrain", "federaser"], tmp_path / "out", ["fedper", "ditto", "local"])
    assert digest(out) == before
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [p for p in files if f"client-{victim}." in p.name or f"client-{victim}-" in p.name]
    for norms in (tmp_path / "out" / "forget").rglob("norms.json"):
        assert all(victim not in clients for clients in json.loads(norms.read_text()).values())
    assert (tmp_path / "out" / "models" / "fedper" / "client-0.safetensors").exists() or victim == "0"
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["forgotten"] == [victim] and audit["models"]["fedper"]["files"]
    methods = {(r["algorithm"], r["method"]): r for r in result["runs"]}
    assert methods[("fedper", "retrain")]["remaining_acc_after"] == methods[("fedper", "retrain")]["remaining_acc_retrain"]
    assert methods[("ditto", "federaser")]["refused"] is None


def test_federaser_refuses_what_it_cannot_calibrate(run_dir, tmp_path):
    out, config = run_dir
    victim = str(min(first_rounds(config), key=first_rounds(config).get))
    result = forget(out, [victim], ["federaser"], tmp_path / "out", ["scaffold", "centralized"], verify=False)
    reasons = {r["algorithm"]: r["refused"] for r in result["runs"]}
    assert "not FedAvg's mean" in reasons["scaffold"] and "does not federate" in reasons["centralized"]


def test_membership_inference_detects_a_memorized_client():
    torch.manual_seed(0)
    assert probe.auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert probe.auc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.5
    config = make_config(run__algorithms="fedavg")
    p = prepare(config)
    d = p.data.client(0)
    params = p.task.init_params(torch.Generator().manual_seed(0))
    w = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(list(w.values()), lr=0.5)
    for _ in range(300):  # memorize the client's training samples
        opt.zero_grad()
        p.task.loss(w, d.x_train, d.y_train).backward()
        opt.step()
    trained = {k: v.detach() for k, v in w.items()}
    others = p.data.client(1)
    assert probe.mia_auc(p.task, trained, d.x_train, d.y_train, others.x_test, others.y_test) > 0.8
    assert abs(probe.mia_auc(p.task, params, d.x_train, d.y_train, others.x_test, others.y_test) - 0.5) < 0.2


def test_backdoor_probe_is_planted_and_measured():
    config = make_config(forget__probe="2", forget__probe_target=7, run__algorithms="fedavg")
    p = prepare(config)
    clean = prepare(make_config(run__algorithms="fedavg")).data
    rows = probe.planted_rows(p.data, 2, 0.5, config.run.seed)
    assert bool((p.data.y_train[rows] == 7).all()) and not torch.equal(p.data.x_train, clean.x_train)
    changed = (p.data.x_train != clean.x_train).reshape(len(clean.y_train), -1).any(dim=1).nonzero().flatten()
    assert set(changed.tolist()) <= set(rows.tolist())
    value = probe.trigger_value(p.data)
    x, y = p.data.x_test, p.data.y_test
    # a "model" that answers 7 whenever the trigger is present has full attack success
    w = torch.zeros(10, x[0].numel())
    w[7, -probe.TRIGGER_FEATURES:] = 100.0
    model = {"head.weight": w, "head.bias": torch.zeros(10)}
    assert probe.backdoor_success(p.task, model, x, y, 7, value) == 1.0


def test_bad_input_is_refused(run_dir, tmp_path):
    out, _ = run_dir
    runner = CliRunner()
    r = runner.invoke(app, ["forget", str(out), "--client", "nope", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "unknown client id" in r.output
    r = runner.invoke(app, ["forget", str(out), "--client", "1", "--method", "magic", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "unknown forget method" in r.output
    forget(out, ["1"], ["retrain"], tmp_path / "c", ["fedavg"], verify=False)
    r = runner.invoke(app, ["forget", str(tmp_path / "c"), "--client", "1", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "output of `fedarena forget`" in r.output
    none = tmp_path / "none"
    run_compare(make_config(forget__keep="none", run__algorithms="fedavg"), none)
    r = runner.invoke(app, ["forget", str(none), "--client", "1", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "kept nothing" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_federaser_calibration_is_eqs_3_and_4_by_hand():
    from fedarena.core.types import ServerState, Upload
    from fedarena.experiments.forget.federaser import _calibrated_step

    server = ServerState(params={"w": torch.tensor([1.0, 1.0])})
    # new updates: client 0 moves by (3, 4) (length 5), client 1 by (0, -2) (length 2)
    uploads = {0: Upload(params={"w": torch.tensor([4.0, 5.0])}), 1: Upload(params={"w": torch.tensor([1.0, -1.0])})}
    # stored lengths 10 and 1, weights 1 and 3
    kept = {0: {"weight": 1, "norms": {"w": 10.0}}, 1: {"weight": 3, "norms": {"w": 1.0}}}
    out = _calibrated_step(server, uploads, kept)
    step = 0.25 * 10.0 * torch.tensor([0.6, 0.8]) + 0.75 * 1.0 * torch.tensor([0.0, -1.0])
    assert torch.allclose(out.params["w"], torch.tensor([1.0, 1.0]) + step)


@pytest.mark.parametrize("privacy", [{"dp_clip": 1.0, "dp_noise": 1.0}, {"secagg": True}])
def test_retrain_is_exact_on_private_runs(tmp_path, privacy):
    config = make_config(run__algorithms="fedavg", **{f"privacy__{k}": v for k, v in privacy.items()})
    run_compare(config, tmp_path / "run")
    src = Source.load(tmp_path / "run", ["2"])
    first = src.first_round("fedavg")
    outcome = retrain(src, "fedavg")
    from fedarena.experiments.compare import privacy_for

    fresh = run_loop(src.algo("fedavg"), src.task, src.data, rounds=ROUNDS, clients_per_round=PER_ROUND,
                          eval_every=ROUNDS, seed=config.run.seed, engine="reference", exclude=[2],
                          privacy=privacy_for(config, src.algo("fedavg"), src.prepared))
    if "secagg" in privacy:  # secure sums are exact only up to the fixed-point resolution
        assert all(torch.allclose(v, outcome.server.params[k], atol=1e-5) for k, v in fresh.server.params.items())
        result = forget(tmp_path / "run", ["2"], ["federaser"], tmp_path / "out", verify=False)
        assert "secure aggregation" in result["runs"][0]["refused"]
    else:
        assert all(torch.equal(v, outcome.server.params[k]) for k, v in fresh.server.params.items())
        assert first is None or outcome.rounds == ROUNDS - (first - 1)


def test_compare_with_a_forget_probe_feeds_the_reports_gdpr_row(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", "--data", "digits", "--clients", "8", "--clients-per-round", "4",
                                 "--rounds", "3", "--model", "mlp", "--set", "model.hidden=8", "--algorithms",
                                 "fedavg,fedper", "--forget-probe", "3", "--set", "forget.keep=all", "--out", str(out),
                                 "--report"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "forget-3" / "forget.json").read_text())["runs"]
    assert {(r["algorithm"], r["method"]) for r in rows} == {(a, m) for a in ("fedavg", "fedper")
                                                             for m in ("retrain", "federaser")}
    assert all(r["backdoor_before"] is not None for r in rows if not r["refused"])
    report = (out / "report.md").read_text()
    gdpr = next(line for line in report.splitlines() if "Right to be forgotten" in line)
    assert "exact removal costs" in gdpr and "not measured" not in gdpr


def test_two_clients_are_forgotten_at_once(run_dir, tmp_path):
    out, config = run_dir
    result = forget(out, ["1", "4"], ["retrain"], tmp_path / "out", ["fedavg", "fedper"], verify=False)
    assert result["forgotten"] == ["1", "4"]
    names = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert not any(n.startswith(("client-1.", "client-4.", "client-1-", "client-4-")) for n in names)
    src = Source.load(out, ["1", "4"])
    fresh = run_loop(src.algo("fedavg"), src.task, src.data, rounds=ROUNDS, clients_per_round=PER_ROUND,
                          eval_every=ROUNDS, seed=config.run.seed, engine="reference", exclude=[1, 4])
    got = retrain(src, "fedavg")
    assert all(torch.equal(v, got.server.params[k]) for k, v in fresh.server.params.items())


def test_malformed_kept_material_is_refused_by_name(tmp_path):
    """Found by fuzzing (tests/fuzz/test_fuzz_rundir.py): a kept server or client state of other shapes reached
    training and raised a torch RuntimeError (a missing key went unnoticed), round metadata that is not an integer
    raised ValueError, and norms.json naming an unknown client, lacking a key, of weight 0 or of a string weight
    raised KeyError, ZeroDivisionError or TypeError in FedEraser."""
    from safetensors.torch import save

    from fedarena.core.types import FedarenaError, ServerState
    from fedarena.forget.store import Stored, encode_state

    like = {"head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3)}
    stored = Stored(tmp_path, "all", server_like=like, client_like={"head.bias": torch.zeros(3)}, clients=("0", "1"),
                    norm_keys=("head.bias", "head.weight"))
    server = tmp_path / "server-r0002.safetensors"
    server.write_bytes(encode_state(ServerState(params=like, round=2), round="2"))
    assert stored.server(2).round == 2
    for params, meta, match in [
        ({**like, "head.bias": torch.zeros(2)}, "2", r"params/head.bias is torch.float32 of shape \(2,\), expected "
                                                     r"torch.float32 of shape \(3,\)"),
        ({"head.weight": like["head.weight"]}, "2", r"missing: head.bias; unknown: none"),
        (like, "x", r"round metadata must be an integer >= 0, got 'x'"),
        (like, "5", r"holds the server state of round 5, not 2"),
    ]:
        server.write_bytes(save({f"params/{k}": v for k, v in params.items()}, metadata={"round": meta}))
        with pytest.raises(FedarenaError, match=r"server-r0002.safetensors.*" + match):
            stored.server(2)
    (tmp_path / "client-1-r0001.safetensors").write_bytes(save({"params/head.bias": torch.zeros(3, dtype=torch.int64)}))
    with pytest.raises(FedarenaError, match=r"client-1-r0001.safetensors: params/head.bias is torch.int64"):
        stored.client_state("1", 2)
    good = {"weight": 5, "norms": {"head.bias": 0.5, "head.weight": 1.0}}
    for norms, match in [
        ({"1": {"0": good, "7": good}}, r"round 1 names client '7', which is not one of the run's"),
        ({"1": {"0": {"weight": 5, "norms": {"head.bias": 0.5}}}}, r"round 1, client '0': expected"),
        ({"1": {"0": {**good, "weight": 0}}}, r"round 1, client '0': expected"),
        ({"1": {"0": {**good, "weight": "5"}}}, r"round 1, client '0': expected"),
        ({"0": {"0": good}}, r"round 0 must be >= 1"),
        ([1, 2], r"is malformed"),
    ]:
        (tmp_path / "norms.json").write_text(json.dumps(norms))
        with pytest.raises(FedarenaError, match=r"norms.json.*" + match):
            stored.norms()
    (tmp_path / "norms.json").write_text(json.dumps({"1": {"0": good}}))
    assert stored.norms() == {1: {"0": good}}
    (tmp_path / "norms.json").write_text(json.dumps({"1": {"1": {"weight": 0, "norms": {}}}}))
    nothing_shared = Stored(tmp_path, "all", clients=("0", "1"), norm_keys=())  # an upload of no tensor weighs 0
    assert nothing_shared.norms() == {1: {"1": {"weight": 0, "norms": {}}}}
