"""Fuzzing what `fedarena continue` and `fedarena forget` read back from a run directory (issue #18, item 4).

Targets, each fed generated files: the kept states (`forget.store.decode_state`, `Stored.server`,
`Stored.client_state`: random bytes, mutated safetensors, tensors with other keys, shapes, dtypes and round
metadata), `norms.json` (`Stored.norms`), `run-state.json` (`continuation._run_state`), `summary.json`
(`rundir.read_json`, `recompute_engine`), the finished rounds read back from summary.json and metrics.parquet
(`continuation._history`), and, end to end, a real run directory with one file damaged at a time, continued
(`continue_run`) and forgotten from (`forget`, retrain and FedEraser).

Property: a malformed file raises FedarenaError naming the file (or, for the rows of metrics.parquet, the
file and the column), nothing else escapes, and what is accepted is well-formed: the states have the
algorithm's keys, shapes and dtypes, the clock is finite, the history's numbers are numbers.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzzing import JSON, canonical, deep, fuzz, mutated_bytes, sizes
from hypothesis import strategies as st
from safetensors.torch import save as st_save
from toy import federation

from fedarena import config as cfg
from fedarena.core.types import ClientState, FedarenaError, ServerState
from fedarena.experiments import continuation
from fedarena.experiments.rundir import RUN_STATE, read_json, recompute_engine
from fedarena.forget.store import Stored, decode_state, encode_state

SERVER = {"head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3)}
CLIENT = {"head.bias": torch.zeros(3)}
CLIENTS = ("0", "1", "2")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int8, torch.uint8, torch.bool)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------- kept states


@st.composite
def tensors(draw) -> dict[str, torch.Tensor]:
    """A state's tensors: the expected ones, some dropped, reshaped, retyped, renamed or added."""
    out = {f"params/{k}": v.clone() for k, v in SERVER.items()}
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["drop", "shape", "dtype", "add", "nan"]))
        name = draw(st.sampled_from(sorted(out) or ["params/head.bias"]))
        if what == "drop":
            out.pop(name, None)
        elif what == "shape":
            out[name] = torch.zeros(draw(st.lists(st.integers(0, 5), max_size=3)))
        elif what == "dtype":
            out[name] = out.get(name, torch.zeros(3)).to(draw(st.sampled_from(DTYPES)))
        elif what == "add":
            out[draw(st.sampled_from(["params/head.w", "extra/c/head.bias", "extra/x", "junk", "params/", "empty"]))] = \
                torch.ones(draw(st.integers(0, 3)))
        else:
            out[name] = torch.full(tuple(out.get(name, torch.zeros(3)).shape), float("nan"))
    return out


ROUNDS = st.one_of(st.integers(-3, 5).map(str), st.sampled_from(["", "x", "1.5", "2 ", "1e3", "٢"]), st.text(max_size=4))


@st.composite
def state_file(draw) -> bytes:
    kind = draw(st.sampled_from(["built", "built", "mutated", "bytes"]))
    if kind == "built":
        meta = draw(st.fixed_dictionaries({}, optional={"round": ROUNDS, "other": st.text(max_size=3)}))
        return st_save(draw(tensors()), metadata=meta or None)
    if kind == "mutated":
        good = canonical(encode_state(ServerState(params=SERVER, round=2), round="2"))
        return draw(mutated_bytes(good))
    return draw(st.one_of(st.binary(max_size=200), st.just(b"")))


def assert_like(params: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> None:
    assert sorted(params) == sorted(like)
    assert all(params[k].shape == like[k].shape and params[k].dtype == like[k].dtype for k in like)


@sizes(200, 1000)
def test_kept_states_are_read_as_the_algorithms_or_refused_naming_the_file(n, folder):
    stored = Stored(folder, "all", server_like=SERVER, client_like=CLIENT, clients=CLIENTS)

    def check(data):
        write(folder, "server-r0002.safetensors", data)
        write(folder, "client-1-r0002.safetensors", data)
        try:
            server = stored.server(2)
        except FedarenaError as exc:
            assert "server-r0002.safetensors" in str(exc), exc
            went = "refused"
        else:
            assert server.round == 2
            assert_like(server.params, SERVER)
            went = "accepted"
        try:
            client = stored.client_state("1", 2)
        except FedarenaError as exc:
            assert "client-1-r0002.safetensors" in str(exc), exc
        else:
            assert client is not None
            assert_like(client.params, CLIENT)
        for kind in (ServerState, ClientState):  # without an expected structure: any state, or a named refusal
            try:
                decode_state(data, kind, "the-file")
            except FedarenaError as exc:
                assert "the-file" in str(exc), exc
        return went

    fuzz("rundir.states", n, state_file(), check)


# ------------------------------------------------------------------------- norms.json


def norms_valid() -> dict[str, Any]:
    return {"1": {"0": {"weight": 12, "norms": {"head.weight": 0.5, "head.bias": 0.25}},
                  "2": {"weight": 7, "norms": {"head.weight": 1.5, "head.bias": 0.0}}},
            "2": {"1": {"weight": 9, "norms": {"head.weight": 0.125, "head.bias": 2.0}}}}


@st.composite
def json_file(draw, valid: dict[str, Any], raw: bool = True) -> bytes:
    """`valid` with values replaced or deleted at any depth, any JSON, or (`raw`) bytes that are not JSON."""
    kind = draw(st.sampled_from(["edit", "edit", "edit", "json", *(["bytes"] if raw else [])]))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "bytes":
        return draw(st.one_of(st.binary(max_size=100), st.sampled_from([deep(100_000), b"", b"{", b"NaN", b"\xff"])))
    value = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 3))):
        node, key = value, None
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 2)):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = key if key in node else draw(st.sampled_from(sorted(node)))
            if draw(st.integers(0, 3)):
                node[key] = draw(JSON)
            else:
                del node[key]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=3))] = draw(JSON)
    return json.dumps(value, allow_nan=True).encode()


@sizes(200, 800)
def test_norms_are_well_formed_or_refused_naming_the_file(n, folder):
    stored = Stored(folder, "server", server_like=SERVER, clients=CLIENTS)

    def check(data):
        write(folder, "norms.json", data)
        try:
            norms = stored.norms()
        except FedarenaError as exc:
            assert "norms.json" in str(exc), exc
            return "refused"
        for rnd, per_client in norms.items():
            assert type(rnd) is int and rnd >= 1 and isinstance(per_client, dict)
            for cid, entry in per_client.items():
                assert cid in CLIENTS
                assert number(entry["weight"]) and entry["weight"] > 0
                assert entry["norms"].keys() <= SERVER.keys()
                assert all(number(v) and v >= 0 for v in entry["norms"].values())
        return "accepted"

    fuzz("rundir.norms", n, json_file(norms_valid()), check)


def number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------- run-state.json and summary.json

RUN_STATE_VALID = {"format": "fedarena-run-state/1", "round": 2, "train_seconds": [0.5, 1.25], "wall_seconds": 1.5,
                   "privacy": None, "sample_level": None}


@sizes(200, 800)
def test_run_state_is_well_formed_or_refused_naming_the_file(n, folder):
    def check(data):
        write(folder, RUN_STATE, data)
        try:
            state = continuation._run_state(folder)
        except FedarenaError as exc:
            assert RUN_STATE in str(exc), exc
            return "refused"
        rnd = state["round"]
        assert type(rnd) is int and rnd >= 1 and len(state["train_seconds"]) == rnd
        assert all(number(x) and x >= 0 for x in [*state["train_seconds"], state["wall_seconds"]])
        assert all(state[k] is None or isinstance(state[k], dict) for k in ("privacy", "sample_level"))
        return "accepted"

    fuzz("rundir.run-state", n, json_file(RUN_STATE_VALID), check)


@sizes(150, 500)
def test_summary_engine_is_read_or_refused_naming_the_run(n, folder):
    def check(data):
        write(folder, "summary.json", data)
        try:
            engine = recompute_engine(folder, "continue")
        except FedarenaError as exc:
            assert str(folder) in str(exc), exc
            return "refused"
        assert engine in ("reference", "vectorized")
        assert read_json(folder / "summary.json")["engine"] in ("reference", "vectorized", "flower-sim")
        return "accepted"

    valid = {"engine": "vectorized", "runs": []}
    fuzz("rundir.summary-engine", n, st.one_of(json_file(valid), st.sampled_from(
        ["reference", "flower-sim", "flower", "vectorized "]).map(lambda e: json.dumps({"engine": e}).encode())), check)


# ------------------------------------------------------------------------- the finished rounds

DATA = federation([4, 5, 6], [2, 3, 4], classes=3)
COLUMNS = ("round", "client", "sampled", "train_loss", "test_acc", "test_loss", "bytes_up", "bytes_down", "val_acc",
           "num_val")


def history_valid() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = {"runs": [{"algorithm": "fedavg", "history": [{"round": 1, "global_acc": 0.5},
                                                            {"round": 2, "global_acc": 0.75}]}]}
    rows = [{"algorithm": "fedavg", "round": rnd, "client": cid, "sampled": cid != "2", "train_loss": 0.5 if cid != "2" else None,
             "test_acc": 0.5, "test_loss": 1.0, "bytes_up": 100, "bytes_down": 200, "val_acc": None, "num_val": None}
            for rnd in (1, 2) for cid in CLIENTS]
    return summary, rows


CELLS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=3),
                  st.sampled_from(CLIENTS), st.integers(0, 3))


@st.composite
def history(draw) -> tuple[Any, list[dict[str, Any]]]:
    summary, rows = history_valid()
    if draw(st.booleans()):
        summary = json.loads(draw(json_file(summary, raw=False)))
    for _ in range(draw(st.integers(0, 3))):
        row = draw(st.sampled_from(rows))
        column = draw(st.sampled_from([*COLUMNS, "algorithm"]))
        if draw(st.integers(0, 5)):
            row[column] = draw(CELLS)
        else:
            row.pop(column, None)
    return summary, rows


STATE = {"round": 2, "train_seconds": [0.5, 1.25], "wall_seconds": 1.5}


@sizes(200, 800)
def test_finished_rounds_are_numbers_or_refused_naming_the_file(n):
    def check(case):
        summary, rows = case
        try:
            run = continuation._history("fedavg", summary, rows, DATA, STATE)
        except FedarenaError as exc:
            assert "summary.json" in str(exc) or "metrics.parquet" in str(exc), exc
            return "refused"
        assert len(run.sampled) == 2 and all(0 <= c < 3 for chosen in run.sampled for c in chosen)
        assert all(number(v) for v in run.train_loss.values())
        assert all(type(v) is int and v >= 0 for v in [*run.ledger.up.values(), *run.ledger.down.values()])
        for e in run.evaluations:
            assert e.global_acc is None or number(e.global_acc)
            assert all(isinstance(a, float) for a in [*e.per_client_acc, *e.per_client_loss])
            assert all(v is None or isinstance(v, float) for v in e.per_client_val_acc)
            assert all(type(v) is int and v >= 0 for v in e.val_sizes)
        return "accepted"

    fuzz("rundir.history", n, history(), check)


# ------------------------------------------------------------------------- a whole run, one file damaged


def _config(algorithms: str) -> cfg.Config:
    return cfg.build(None, {"data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 3},
                            "train": {"rounds": 2, "clients_per_round": 2, "eval_every": 1}, "model": {"name": "mlr"},
                            "run": {"algorithms": algorithms, "seed": 2, "engine": "reference"},
                            "forget": {"keep": "all"}}, [])


@pytest.fixture(scope="module")
def run_dir():
    from fedarena.experiments.compare import run_compare

    with tempfile.TemporaryDirectory() as d:
        run_compare(_config("fedavg,fedper"), Path(d) / "run")
        yield Path(d) / "run"


@st.composite
def damage(draw, files: list[str]) -> tuple[str, bytes | None]:
    """(a file of the run, its new bytes or None: deleted)."""
    name = draw(st.sampled_from(files))
    data = RUN_DIR_FILES[name]
    if draw(st.integers(0, 9)) == 0:
        return name, None
    if name.endswith(".json"):
        return name, draw(json_file(json.loads(data)))
    if name.endswith(".safetensors"):
        return name, draw(st.one_of(mutated_bytes(canonical(data)), st.builds(lambda t: st_save(t), tensors())))
    if name.endswith(".toml"):
        lines = data.decode().splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(st.sampled_from(["", "x", "[", "rounds = -1", "seed = 'a'", "keep = 'none'", "seeds = 2",
                                         'algorithms = ["fedavg", "nothing"]', "num_clients = 100000"]))
        return name, "\n".join(lines).encode()
    return name, draw(mutated_bytes(data))


RUN_DIR_FILES: dict[str, bytes] = {}


@pytest.mark.slow
def test_a_damaged_run_is_continued_or_forgotten_from_or_refused(run_dir, tmp_path_factory):
    """~3 s per input (a continue or a forget of 2 algorithms, each preparing the data anew): slow only, 10 inputs."""
    from fedarena.experiments.forget.run import forget

    work = tmp_path_factory.mktemp("damaged")

    def check(case):
        (name, data), command = case
        shutil.rmtree(work)
        shutil.copytree(run_dir, work / "run")
        path = work / "run" / name
        path.unlink() if data is None else path.write_bytes(data)
        try:
            if command == "continue":
                continuation.continue_run(work / "run", 3, work / "out")
            else:
                forget(work / "run", ["1"], ["retrain", "federaser"], work / "out")
        except FedarenaError as exc:
            assert str(exc)
            return "refused"
        return "accepted"

    fuzz("rundir.whole-run", 10, st.tuples(damage(_files(run_dir)), st.sampled_from(["continue", "forget"])), check)


def _files(run_dir: Path) -> list[str]:
    RUN_DIR_FILES.update({str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()})
    return sorted(RUN_DIR_FILES)


@pytest.mark.slow
def test_the_fixture_run_continues_and_forgets_untouched(run_dir, tmp_path):
    """The undamaged run is accepted by both (so a refusal above is the damage's)."""
    from fedarena.experiments.forget.run import forget

    shutil.copytree(run_dir, tmp_path / "run")
    summary = continuation.continue_run(tmp_path / "run", 3, tmp_path / "continued")
    assert summary["continued_from"]["rounds"] == 2
    assert forget(tmp_path / "run", ["1"], ["retrain", "federaser"], tmp_path / "forgotten")["forgotten"] == ["1"]

