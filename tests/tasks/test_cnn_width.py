"""model.hidden sets the cnn's dense width when given (LEAF's FEMNIST CNN: 2048); its default keeps FedAvg's 512."""

from fedarena.core.types import SGD
from fedarena.tasks import DEFAULT_HIDDEN, cnn_width, make_task


def shapes(task):
    return {k: tuple(v.shape) for k, v in task.module.state_dict().items()}


def test_default_hidden_keeps_the_512_unit_cnn():
    assert cnn_width(DEFAULT_HIDDEN) == 512
    s = shapes(make_task("cnn", (1, 8, 8), 10, SGD()))
    assert s["body.fc3.weight"] == (512, 64 * 2 * 2) and s["head.weight"] == (10, 512)


def test_hidden_2048_is_leafs_femnist_cnn():
    s = shapes(make_task("cnn", (1, 28, 28), 62, SGD(), hidden=2048))
    assert s["body.conv1.weight"] == (32, 1, 5, 5) and s["body.conv2.weight"] == (64, 32, 5, 5)
    assert s["body.fc3.weight"] == (2048, 64 * 7 * 7) and s["head.weight"] == (62, 2048)


def test_hidden_sets_the_width_of_the_normalized_cnn_too():
    s = shapes(make_task("cnn", (1, 8, 8), 10, SGD(), hidden=64, norm="bn"))
    assert s["body.fc3.weight"] == (64, 256) and s["body.norm3.weight"] == (64,) and s["head.weight"] == (10, 64)


def test_summary_width_of_the_cnn_is_the_width_it_is_built_with():
    """summary.json's model.hidden (config.model_width) names the cnn's real dense width: 512 at the default."""
    from fedarena import config as cfg

    default = cfg.build(None, {"model": {"name": "cnn"}}, [])
    wide = cfg.build(None, {"model": {"name": "cnn", "hidden": 2048}}, [])
    assert cfg.model_width(default) == 512
    assert cfg.model_width(wide) == 2048
    assert cfg.model_width(cfg.build(None, {"model": {"name": "mlp"}}, [])) == 200
