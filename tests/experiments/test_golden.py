"""Behaviour kept across refactors: three explicit comparisons (every flag written out) give the saved
summaries bit for bit, timings aside.

A change that alters these numbers on purpose regenerates the saved summaries in its own commit and says
why: ``python tests/experiments/test_golden.py`` (torch on one thread, as the test runs).
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedarena.cli import app

GOLDEN = Path(__file__).parent / "golden"
BASE = ["--data", "digits", "--partition", "dirichlet", "--alpha", "0.3", "--clients", "8", "--clients-per-round", "6",
        "--rounds", "3", "--local-epochs", "1", "--batch-size", "16", "--lr", "0.05", "--model", "mlp", "--seed", "3",
        "--seeds", "1", "--engine", "vectorized", "--target", "0.5"]
COMMANDS = {
    "plain": BASE + ["--algorithms", "fedavg,fedper,ditto,local,centralized"],
    "secagg": BASE + ["--algorithms", "fedavg,fedper", "--secagg"],
    "dp": BASE + ["--algorithms", "fedavg,fedper,ditto", "--dp-clip", "1", "--dp-noise", "1"],
}


def without_timings(obj):
    """The summary with every timing (a key naming seconds) removed: the only fields allowed to differ."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def run(name: str, out: Path) -> dict:
    result = CliRunner().invoke(app, ["compare", *COMMANDS[name], "--out", str(out)])
    assert result.exit_code == 0, result.output
    return without_timings(json.loads((out / "summary.json").read_text()))


def differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: saved {a!r}, now {b!r}"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_saved_summaries_are_reproduced_bit_for_bit(name, tmp_path, one_torch_thread):
    saved = json.loads((GOLDEN / f"{name}.json").read_text())
    now = run(name, tmp_path / name)
    assert saved["runs"], "the saved summary has runs"
    diff = differences(saved, now)
    assert not diff, f"{len(diff)} fields changed, first: " + "; ".join(diff[:5])


if __name__ == "__main__":  # regenerate the saved summaries
    import tempfile

    torch.set_num_threads(1)
    for name in sys.argv[1:] or sorted(COMMANDS):
        with tempfile.TemporaryDirectory() as tmp:
            summary = run(name, Path(tmp) / name)
        (GOLDEN / f"{name}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        print("wrote", GOLDEN / f"{name}.json")
