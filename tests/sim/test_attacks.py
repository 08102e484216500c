"""Poisoning attacks (sim/attacks.py): hand-computed uploads and poisoned rows, seeded choices, bad input."""

import math
import statistics

import pytest
import torch

from fedarena.core.types import FedarenaError, FederatedData, Upload
from fedarena.data import backdoor
from fedarena.forget import probe
from fedarena.sim.attacks import Attack, alie_z_max, check, malicious_clients, poison_data, poison_uploads


def upload(n: int = 10, **params) -> Upload:
    return Upload(params={k: torch.tensor(v) for k, v in params.items()}, num_samples=n, metrics={"train_loss": 0.25})


def tiny() -> FederatedData:
    """3 clients (4, 2 and 3 training rows), 6 features, 10 classes."""
    x = torch.arange(54, dtype=torch.float32).reshape(9, 6)
    return FederatedData(name="tiny", client_ids=("a", "b", "c"), x_train=x, y_train=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 9]),
                         train_offsets=(0, 4, 6, 9), x_test=torch.zeros(3, 6), y_test=torch.tensor([1, 2, 3]),
                         test_offsets=(0, 1, 2, 3), num_classes=10, partition="iid")


@pytest.mark.parametrize(("attack", "key"), [
    (Attack("flood", 0.2), "attack.kind"),
    (Attack("alie", 0.0), "attack.malicious"),
    (Attack("alie", 1.0), "attack.malicious"),
    (Attack("alie", float("nan")), "attack.malicious"),
    (Attack("sign-flip", 0.2, scale=0.0), "attack.scale"),
    (Attack("scale", 0.2, scale=-4.0), "attack.scale"),
    (Attack("scale", 0.2, scale=math.inf), "attack.scale"),
    (Attack("gaussian", 0.2, sigma=0.0), "attack.sigma"),
    (Attack("backdoor", 0.2, target=-1), "attack.target"),
    (Attack("backdoor", 0.2, fraction=0.0), "attack.fraction"),
    (Attack("backdoor", 0.2, fraction=1.5), "attack.fraction"),
])
def test_bad_attacks_are_refused_naming_the_key(attack, key):
    with pytest.raises(FedarenaError, match=key):
        check(attack)


def test_good_attack_passes_check():
    a = Attack("alie", 0.2)
    assert check(a) is a and a.sigma == 200.0 and a.scale is None and a.fraction == 0.5


def test_malicious_clients_are_seeded_counted_and_sorted():
    training = list(range(20))
    bad = malicious_clients(7, training, 0.2)
    assert len(bad) == 4 and bad == sorted(bad) and set(bad) <= set(training)
    assert malicious_clients(7, training, 0.2) == bad
    assert len({tuple(malicious_clients(s, training, 0.2)) for s in range(10)}) > 1  # the seed decides
    assert len(malicious_clients(7, list(range(10)), 0.25)) == 3  # 2.5 rounds half up
    ids = [3, 5, 8, 13, 21]
    assert set(malicious_clients(1, ids, 0.4)) <= set(ids) and len(malicious_clients(1, ids, 0.4)) == 2
    for fraction in (0.01, 0.99):  # 0.2 and 19.8 of 20 round to 0 and 20: no attacker, no benign client
        with pytest.raises(FedarenaError, match="attack.malicious"):
            malicious_clients(7, training, fraction)
    with pytest.raises(FedarenaError, match="attack.malicious"):
        malicious_clients(7, training, 1.0)


def test_sign_flip_reverses_and_amplifies_the_update():
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]]), "count": torch.tensor(3)}
    honest = upload(10, b=[[0.0]], count=7)
    bad = upload(12, a=[1.5, 1.0], b=[[0.0]], count=7)
    uploads = {2: honest, 5: bad}
    out = poison_uploads(Attack("sign-flip", 0.2), 1, 0, uploads, {2: w, 5: w}, {5})
    assert list(out) == [2, 5] and out[2] is honest  # honest uploads are the same objects
    # w - 4 (w_k - w): a = 1 - 4 * 0.5, 2 - 4 * (-1); b = 0.5 - 4 * (-0.5)
    assert out[5].params["a"].tolist() == [-1.0, 6.0] and out[5].params["b"].tolist() == [[2.5]]
    assert out[5].params["count"].item() == 7 and out[5].params["a"].dtype == torch.float32
    assert out[5].num_samples == 12 and out[5].metrics == {"train_loss": 0.25}
    assert bad.params["a"].tolist() == [1.5, 1.0]  # the input is not mutated
    twice = poison_uploads(Attack("sign-flip", 0.2, scale=2.0), 1, 0, {5: bad}, {5: w}, {5})
    assert twice[5].params["a"].tolist() == [0.0, 4.0]  # s = 2


def test_scale_replaces_the_weighted_mean_by_the_attackers_model():
    w = {"a": torch.tensor([1.0])}
    uploads = {1: upload(10, a=[1.5]), 2: upload(30, a=[1.0]), 3: upload(60, a=[1.0])}
    out = poison_uploads(Attack("scale", 0.2), 1, 0, uploads, {c: w for c in uploads}, {1})
    assert out[1].params["a"].item() == 6.0  # gamma = N / n_k = 100 / 10: 1 + 10 * 0.5
    mean = sum(u.num_samples * u.params["a"] for u in out.values()) / 100
    assert mean.item() == pytest.approx(1.5)  # FedAvg's mean lands on the attacker's model w_k
    # two colluders share the boost: gamma_k = N / (2 n_k), the mean moves by the mean of their updates
    uploads = {1: upload(10, a=[1.5]), 2: upload(40, a=[3.0]), 3: upload(50, a=[1.0])}
    out = poison_uploads(Attack("scale", 0.2), 1, 0, uploads, {c: w for c in uploads}, {1, 2})
    assert out[1].params["a"].item() == 3.5 and out[2].params["a"].item() == 3.5  # 1 + 5 * 0.5, 1 + 1.25 * 2
    mean = sum(u.num_samples * u.params["a"] for u in out.values()) / 100
    assert mean.item() == pytest.approx(1 + (0.5 + 2.0) / 2)
    fixed = poison_uploads(Attack("scale", 0.2, scale=3.0), 1, 0, uploads, {c: w for c in uploads}, {1})
    assert fixed[1].params["a"].item() == 2.5 and fixed[2] is uploads[2]


def test_alie_z_max_from_the_papers_formula():
    assert alie_z_max(10, 3) == pytest.approx(0.5244005127080407, abs=1e-12)  # s = 6 - 3 = 3, Phi^-1(7/10)
    assert alie_z_max(50, 12) == pytest.approx(statistics.NormalDist().inv_cdf(36 / 50))  # s = 26 - 12 = 14
    assert alie_z_max(4, 3) == pytest.approx(0.6744897501960817, abs=1e-12)  # s = 3 - 3 < 1: s = 1, Phi^-1(3/4)
    assert alie_z_max(2, 1) == 0.0  # s = 1, Phi^-1(1/2)


def test_alie_on_3_malicious_of_10():
    w = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0])}
    # malicious updates of a: (1, 0), (2, 0), (6, 3); of b: 0, 0, 3
    bad = {0: upload(a=[2.0, 0.0], b=[2.0]), 4: upload(a=[3.0, 0.0], b=[2.0]), 9: upload(a=[7.0, 3.0], b=[5.0])}
    good = {c: upload(a=[1.0, 0.0], b=[2.0]) for c in (1, 2, 3, 5, 6, 7, 8)}
    uploads = {c: (bad | good)[c] for c in range(10)}
    out = poison_uploads(Attack("alie", 0.3), 4, 0, uploads, {c: w for c in range(10)}, set(bad))
    z = 0.5244005127080407
    # a[0]: mu = 3, sd = sqrt(14 / 3); a[1]: mu = 1, sd = sqrt(2); b: mu = 1, sd = sqrt(2)
    expected_a = [1.0 + 3 - z * math.sqrt(14 / 3), 0.0 + 1 - z * math.sqrt(2)]
    for c in bad:
        assert out[c].params["a"].tolist() == pytest.approx(expected_a, abs=1e-6)
        assert out[c].params["b"].tolist() == pytest.approx([2.0 + 1 - z * math.sqrt(2)], abs=1e-6)
    assert all(out[c] is good[c] for c in good)
    # a single malicious client in a round: sd = 0, w + mu is its honest result, left as it is
    alone = poison_uploads(Attack("alie", 0.3), 4, 0, uploads, {c: w for c in range(10)}, {9})
    assert alone[9] is uploads[9]


def test_gaussian_noise_is_seeded_per_round_and_client_with_sigma():
    w = {"a": torch.full((100, 100), 0.5), "count": torch.tensor(1)}
    uploads = {c: upload(a=torch.zeros(100, 100).tolist(), count=1) for c in (3, 4)}
    one = poison_uploads(Attack("gaussian", 0.2), 2, 11, uploads, {3: w, 4: w}, {3, 4})
    again = poison_uploads(Attack("gaussian", 0.2), 2, 11, uploads, {3: w, 4: w}, {3, 4})
    assert torch.equal(one[3].params["a"], again[3].params["a"])  # same seed, round, client: same bits
    later = poison_uploads(Attack("gaussian", 0.2), 3, 11, uploads, {3: w, 4: w}, {3, 4})
    assert not torch.equal(one[3].params["a"], later[3].params["a"])
    assert not torch.equal(one[3].params["a"], one[4].params["a"])
    e = one[3].params["a"].double() - 0.5  # w + N(0, 200^2): the honest result (zeros) is dropped
    assert abs(e.std().item() - 200) < 6 and abs(e.mean().item()) < 8  # 10,000 draws: sd error ~1.4, mean ~2
    assert one[3].params["count"].item() == 1
    small = poison_uploads(Attack("gaussian", 0.2, sigma=0.01), 2, 11, uploads, {3: w, 4: w}, {3})
    assert abs((small[3].params["a"].double() - 0.5).std().item() - 0.01) < 3e-4


def test_data_kinds_leave_uploads_and_model_kinds_leave_data():
    w = {"a": torch.tensor([1.0])}
    uploads = {1: upload(a=[2.0]), 2: upload(a=[3.0])}
    for kind in ("label-flip", "backdoor"):
        out = poison_uploads(Attack(kind, 0.5), 1, 0, uploads, {1: w, 2: w}, {1})
        assert list(out) == [1, 2] and all(out[c] is uploads[c] for c in uploads)
    data = tiny()
    for kind in ("sign-flip", "gaussian", "alie"):
        assert poison_data(Attack(kind, 0.5), data, [1], 0) is data


def test_label_flip_changes_only_the_malicious_rows():
    data = tiny()
    y_before = data.y_train.clone()
    out = poison_data(Attack("label-flip", 0.4), data, [1], 0)
    assert out.y_train.tolist() == [0, 1, 2, 3, 5, 4, 6, 7, 9]  # client 1's rows 4:6, y -> 9 - y
    assert torch.equal(data.y_train, y_before) and out.x_train is data.x_train and out.y_test is data.y_test


def test_backdoor_plants_the_trigger_in_a_share_of_every_malicious_client():
    data = tiny()
    x_before = data.x_train.clone()
    for kind in ("backdoor", "scale"):
        out = poison_data(Attack(kind, 0.4, target=8), data, [0, 2], 5)
        rows0 = backdoor.planted_rows(data, 0, 0.5, 5, "attack-backdoor")
        rows2 = backdoor.planted_rows(data, 2, 0.5, 5, "attack-backdoor")
        assert len(rows0) == 2 and set(rows0.tolist()) <= {0, 1, 2, 3}  # half of 4 rows
        assert len(rows2) == 2 and set(rows2.tolist()) <= {6, 7, 8}  # round(1.5) of 3 rows
        planted = sorted(rows0.tolist() + rows2.tolist())
        changed = (out.x_train != data.x_train).any(dim=1) | (out.y_train != data.y_train)
        assert changed.nonzero().flatten().tolist() == planted
        # the trigger: the last 4 features at their training maxima (rows 8's, the largest), label 8
        assert out.x_train[planted, -4:].tolist() == [[50.0, 51.0, 52.0, 53.0]] * 4
        assert out.y_train[planted].tolist() == [8] * 4
        assert torch.equal(data.x_train, x_before) and out.x_test is data.x_test
        assert torch.equal(poison_data(Attack(kind, 0.4, target=8), data, [0, 2], 5).x_train, out.x_train)
    with pytest.raises(FedarenaError, match="attack.target"):
        poison_data(Attack("backdoor", 0.4, target=10), data, [0], 5)
    with pytest.raises(FedarenaError, match="malicious clients"):
        poison_data(Attack("backdoor", 0.4), data, [3], 5)


def test_an_upload_key_without_broadcast_counterpart_is_refused():
    with pytest.raises(FedarenaError, match="'cluster0/a'"):
        poison_uploads(Attack("sign-flip", 0.5), 1, 0, {1: upload(**{"cluster0/a": [1.0]})}, {1: {"a": torch.ones(1)}}, {1})


def test_the_forget_probe_uses_the_same_trigger():
    assert probe.add_trigger is backdoor.add_trigger and probe.trigger_value is backdoor.trigger_value
    assert probe.backdoor_success is backdoor.backdoor_success and probe.TRIGGER_FEATURES == 4
    data = tiny()
    assert torch.equal(probe.planted_rows(data, 0, 0.5, 3), backdoor.planted_rows(data, 0, 0.5, 3, "forget-probe"))
