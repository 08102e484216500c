"""The journal of a deploy's resume state (layout and checks: :mod:`fedarena.experiments.deploy_resume`): after every
round it writes what the ServerApp needs to continue, and as `compare.run_experiment`'s `train` it skips the
(algorithm, seed)s that finished before a restart and continues the one in progress from its checkpoint, through the
comparison's own `train_algorithm(resume=...)` and `continuation.join_runs`: no second round loop."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError

import fedarena
from fedarena import config as cfg
from fedarena.core.codec import Ledger
from fedarena.core.types import ClientState, FedarenaError, ServerState
from fedarena.experiments.compare import Prepared, privacy_for, train_algorithm
from fedarena.experiments.continuation import Resume, join_runs
from fedarena.experiments.deploy_resume import (
    CONFIG,
    FORMAT,
    JOURNAL,
    NORMS,
    PROGRESS,
    atomic,
    check,
    deployment,
    read_json,
    state_dir,
)
from fedarena.forget.store import decode_state, encode_state
from fedarena.privacy.dpsgd import SampleLevel
from fedarena.sim.engine import AlgorithmRun, Checkpoint, Evaluation

log = logging.getLogger(__name__)
# AlgorithmRun's fields written in a form of their own; every other field is plain JSON
_OWN = frozenset({"evaluations", "train_loss", "ledger", "server", "states", "kept", "privacy", "sample_dp"})
_NAME = re.compile(r"[^/\\\0]+")


@dataclass(frozen=True)
class Saved:
    """One (algorithm, seed) as the state folder has it: a finished run, or the rounds so far and their Resume."""

    run: AlgorithmRun
    resume: Resume | None  # None: finished


class Journal:
    """The state folder of a deploy writing `out`; `train` is `compare.run_experiment`'s `train`. `join_engine(before,
    after)` joins the runtime summaries of the rounds before and after a restart (Flower's: its exchanges)."""

    def __init__(self, out: Path, config: cfg.Config, resume: bool,
                 join_engine: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = lambda _, after: after) -> None:
        check(out, config, resume)
        self.root, self.config, self.join_engine = state_dir(out), config, join_engine
        self.deployment = deployment(self.root) if resume else secrets.token_hex(8)
        self.started = resume  # journal.json is written with the first checkpoint (a resume has one)
        self.written: dict[Path, set[str]] = {}  # forget material written by this process, per folder
        if not resume:
            for old in self.root.glob("seed-*"):  # a deploy that died before its first checkpoint
                shutil.rmtree(old)

    def train(self, config: cfg.Config, p: Prepared, name: str,
              on_round: Callable[[str, int], None] | None = None) -> tuple[Any, AlgorithmRun]:
        """`compare.train_algorithm`, skipped where this (algorithm, seed) finished before the restart, continued from
        its checkpoint where it was in progress, and checkpointed after every round."""
        folder = self.root / f"seed-{config.run.seed}" / name
        saved = self._load(folder, config, p, name) if (folder / PROGRESS).is_file() else None
        if saved is not None and saved.resume is None:
            log.info("%s (seed %d) finished before the restart: not rerun", name, config.run.seed)
            return cfg.hyperparameters(config, name), saved.run
        before = saved.run if saved is not None else None
        if saved is not None and saved.resume is not None:
            log.info("%s (seed %d) continues from its checkpoint of round %d", name, config.run.seed,
                     saved.resume.checkpoint.round)

        def checkpoint(rnd: int, run: AlgorithmRun) -> None:
            self._save(folder, rnd, self._join(before, run), finished=False)

        algo, run = train_algorithm(config, p, name, on_round, resume=saved.resume if saved is not None else None,
                                    on_checkpoint=checkpoint)
        run = self._join(before, run)
        self._save(folder, len(run.train_seconds), run, finished=True)
        return algo, run

    def close(self) -> None:
        """The run directory is complete: drop the state (deploy --local's working directory stays for it to remove)."""
        for path in (self.root / JOURNAL, self.root / CONFIG):
            path.unlink(missing_ok=True)
        for old in self.root.glob("seed-*"):
            shutil.rmtree(old)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def _join(self, before: AlgorithmRun | None, after: AlgorithmRun) -> AlgorithmRun:
        if before is None:
            return after
        return dataclasses.replace(join_runs(before, after), engine=self.join_engine(before.engine, after.engine))

    def _save(self, folder: Path, rnd: int, run: AlgorithmRun, finished: bool) -> None:
        if not self.started:
            self.root.mkdir(parents=True, exist_ok=True)
            cfg.dump_toml(self.config, self.root / f".{CONFIG}.tmp", fedarena.__version__)
            os.replace(self.root / f".{CONFIG}.tmp", self.root / CONFIG)
            atomic(self.root / JOURNAL, json.dumps({"format": FORMAT, "deployment": self.deployment}).encode())
            self.started = True
        assert run.server is not None
        server = f"server-r{rnd:04d}.safetensors"
        atomic(folder / server, encode_state(run.server, round=str(run.server.round)))
        clients = f"clients-r{rnd:04d}.safetensors" if run.states else None
        if clients:
            atomic(folder / clients, _encode_states(run.states))
        written = self.written.setdefault(folder, set())
        for fname, payload in run.kept.items():  # once each (norms.json grows): files of a dead run are replaced
            if fname == NORMS or fname not in written:
                atomic(folder / "kept" / fname, payload)
                written.add(fname)
        progress = {"format": FORMAT, "round": rnd, "finished": finished, "server": server, "clients": clients,
                    "kept": sorted(run.kept), "run": _plain(run),
                    "privacy": run.privacy.state(rnd) if run.privacy is not None else None,
                    "transport": run.privacy.transport if run.privacy is not None else None,
                    "sample_level": run.sample_dp.state() if run.sample_dp is not None else None}
        atomic(folder / PROGRESS, json.dumps(progress).encode())
        for old in folder.glob("*-r[0-9][0-9][0-9][0-9].safetensors"):
            if old.name not in (server, clients):
                old.unlink()

    def _load(self, folder: Path, config: cfg.Config, p: Prepared, name: str) -> Saved:
        path = folder / PROGRESS
        progress = read_json(path)
        try:
            if progress["format"] != FORMAT:
                raise ValueError(f"format {progress['format']!r} is not {FORMAT}")
            rnd, server_file, clients_file = int(progress["round"]), str(progress["server"]), progress["clients"]
            names = [str(n) for n in progress["kept"]]
            if not all(_NAME.fullmatch(n) and not n.startswith(".")
                       for n in [server_file, *names, *([str(clients_file)] if clients_file else [])]):
                raise ValueError("a file name leaves the folder")
            run = _run(progress["run"])
            server = decode_state((folder / server_file).read_bytes(), ServerState, str(folder / server_file))
            states = _decode_states((folder / str(clients_file)).read_bytes()) if clients_file else {}
            kept = {n: (folder / "kept" / n).read_bytes() for n in names}
            privacy_state, sample_level = progress["privacy"], progress["sample_level"]
        except (OSError, KeyError, TypeError, ValueError, AttributeError, SafetensorError) as exc:
            raise FedarenaError(f"{path} cannot be resumed ({type(exc).__name__}: {exc})") from None
        assert isinstance(server, ServerState)
        run.server, run.states, run.kept = server, states, kept
        if not progress["finished"]:
            files = {n: b for n, b in kept.items() if n != NORMS}
            norms = {int(r): v for r, v in json.loads(kept[NORMS]).items()} if NORMS in kept else {}
            return Saved(run, Resume(Checkpoint(rnd, server, states), privacy_state, sample_level, files, norms))
        config = cfg.with_clients_per_round(config, p.data.num_clients)  # as train_algorithm resolves it
        if privacy_state is not None:
            run.privacy = privacy_for(config, cfg.hyperparameters(config, name), p)
            run.privacy.restore(privacy_state, rnd)
            run.privacy.transport = str(progress["transport"])
        if sample_level is not None:
            run.sample_dp = SampleLevel.build(config.privacy)
            run.sample_dp.restore(sample_level)
        return Saved(run, None)


def _plain(run: AlgorithmRun) -> dict[str, Any]:
    """The run as JSON (floats as Python writes them: exact; NaN and Infinity as Python's json spells them)."""
    out = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name not in _OWN}
    out["evaluations"] = [dataclasses.asdict(e) for e in run.evaluations]
    out["train_loss"] = [[r, c, loss] for (r, c), loss in sorted(run.train_loss.items())]
    out["ledger"] = {"verify": run.ledger.verify, "up": [[r, c, n] for (r, c), n in sorted(run.ledger.up.items())],
                     "down": [[r, c, n] for (r, c), n in sorted(run.ledger.down.items())]}
    return out


def _run(plain: dict[str, Any]) -> AlgorithmRun:
    fields = dict(plain)
    evaluations = [Evaluation(**e) for e in fields.pop("evaluations")]
    train_loss = {(int(r), int(c)): float(x) for r, c, x in fields.pop("train_loss")}
    saved = fields.pop("ledger")
    ledger = Ledger(verify=bool(saved["verify"]))
    ledger.up = {(int(r), int(c)): int(n) for r, c, n in saved["up"]}
    ledger.down = {(int(r), int(c)): int(n) for r, c, n in saved["down"]}
    unknown = set(fields) - {f.name for f in dataclasses.fields(AlgorithmRun)} | (set(fields) & _OWN)
    if unknown:
        raise ValueError(f"fields {sorted(unknown)} are not this fedarena's")
    return AlgorithmRun(**fields, evaluations=evaluations, train_loss=train_loss, ledger=ledger)


def _encode_states(states: dict[int, ClientState]) -> bytes:
    from safetensors.torch import save

    # clone: clients that never trained share their initial tensors, which safetensors refuses to write twice
    tensors = {f"{c}/{part}/{k}": v.detach().cpu().clone(memory_format=torch.contiguous_format)
               for c, s in states.items() for part, kv in (("params", s.params), ("extra", s.extra)) for k, v in kv.items()}
    return save(tensors, metadata={"clients": json.dumps(sorted(states))})


def _decode_states(data: bytes) -> dict[int, ClientState]:
    from safetensors.torch import load

    tensors = load(data)
    n = int.from_bytes(data[:8], "little")
    clients = json.loads(json.loads(data[8:8 + n])["__metadata__"]["clients"])
    parts: dict[int, dict[str, dict[str, Any]]] = {int(c): {"params": {}, "extra": {}} for c in clients}
    for key, value in sorted(tensors.items()):
        c, part, name = key.split("/", 2)
        parts[int(c)][part][name] = value
    return {c: ClientState(params=kv["params"], extra=kv["extra"]) for c, kv in parts.items()}
