"""A finished run read back for deletion: its config, clients (rebuilt from the seed), kept material and
final states, and the forgotten clients' indices."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from fedarena import config as cfg
from fedarena.core.types import EVERYTHING, ClientState, FedarenaError, Params, ServerState
from fedarena.experiments.compare import Prepared, prepare, privacy_for
from fedarena.experiments.rundir import recompute_engine
from fedarena.forget.probe import planted_rows
from fedarena.forget.store import Stored, decode_state
from fedarena.sim.engine import sample_clients
from fedarena.sim.runtime import initial_model


@dataclass(frozen=True)
class Outcome:
    """A model state without the forgotten clients, and what producing it cost."""

    server: ServerState
    states: dict[int, ClientState]
    rounds: int
    bytes: int
    seconds: float
    note: str


@dataclass
class Source:
    dir: Path
    config: cfg.Config
    prepared: Prepared  # the run's clients in this process, on `engine`
    engine: str  # the in-process engine that recomputes this run (the reference engine for a flower-sim run)
    forgotten: list[int]
    _stored: dict[str, Stored] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, run_dir: Path, clients: list[str]) -> "Source":
        run_dir = Path(run_dir)
        if (run_dir / "audit.json").is_file():
            raise FedarenaError(
                f"{run_dir} is the output of `fedarena forget`, not a training run: forget every client at once "
                "from the original run (--client A --client B)"
            )
        if not (run_dir / "config.toml").is_file() or not (run_dir / "summary.json").is_file():
            raise FedarenaError(f"{run_dir} is not a fedarena run directory (config.toml and summary.json expected)")
        config = cfg.build(str(run_dir / "config.toml"), {}, [])
        if config.run.seeds != 1:
            raise FedarenaError(f"{run_dir} holds {config.run.seeds} seeds; forget works on single-seed runs")
        if config.forget.keep == "none":
            raise FedarenaError(
                f"{run_dir} kept nothing for deletion (forget.keep=none): rerun with forget.keep=server or all"
            )
        engine = recompute_engine(run_dir, "forget")
        prepared = prepare(config, engine)
        ids = prepared.data.client_ids
        unknown = [c for c in clients if c not in ids]
        if unknown:
            raise FedarenaError(f"unknown client id(s) {', '.join(unknown)}; the run's clients are {', '.join(ids)}")
        if not clients or len(set(clients)) != len(clients):
            raise FedarenaError("name each client to forget once (--client ID)")
        new = [c for c in clients if ids.index(c) in prepared.new_clients]
        if new:
            raise FedarenaError(f"client(s) {', '.join(new)} never trained (held out as new clients): nothing to forget")
        return cls(run_dir, config, prepared, engine, sorted(ids.index(c) for c in clients))

    # ------------------------------------------------------------ the run
    @property
    def data(self):
        return self.prepared.data

    @property
    def task(self):
        return self.prepared.task

    @property
    def seed(self) -> int:
        return self.config.run.seed

    @property
    def keep(self) -> str:
        return self.config.forget.keep

    @property
    def held_out(self) -> list[int]:
        return list(self.prepared.new_clients)

    @cached_property
    def index(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.data.client_ids)}

    @cached_property
    def training(self) -> list[int]:
        return [c for c in range(self.data.num_clients) if c not in self.held_out]

    @cached_property
    def remaining(self) -> list[int]:
        return [c for c in self.training if c not in self.forgotten]

    @cached_property
    def initial(self) -> Params:
        return initial_model(self.task, self.seed)

    def task_of(self, name: str) -> Any:
        """The model task `name` trained with (its own learning rate where the run's config gives one)."""
        return cfg.algorithm_task(self.config, name, self.task)

    def algo(self, name: str) -> Any:
        if name not in self.config.run.algorithms:
            raise FedarenaError(f"algorithm '{name}' is not in this run ({', '.join(self.config.run.algorithms)})")
        return cfg.hyperparameters(self.config, name)

    def stored(self, name: str) -> Stored:
        """The algorithm's forget material (read once: its snapshot index is cached), checked against its structure."""
        if name not in self._stored:
            self._stored[name] = Stored.of(self.dir / "forget" / name, self.keep, self.algo(name), self.initial,
                                           self.data.client_ids)
        return self._stored[name]

    def first_round(self, name: str) -> int | None:
        """The first round any forgotten client trained in (its data is in `centralized`'s pool from round 1)."""
        algo = self.algo(name)
        if not algo.federated:
            return 1
        # DP runs sample clients their own way (Poisson)
        privacy, t = privacy_for(self.config, algo, self.prepared), self.config.train
        for rnd in range(1, t.rounds + 1):
            chosen = sample_clients(self.seed, rnd, self.training, t.clients_per_round)
            if privacy is not None:
                chosen = privacy.sample(rnd, self.training, chosen)
            if set(self.forgotten) & set(chosen):
                return rnd
        return None

    def stateful(self, name: str) -> bool:
        return any((self.dir / "models" / name).glob("client-*.safetensors"))

    def resume_round(self, name: str, rnd: int) -> int:
        """`rnd` if the run kept every state needed to resume after it, else 0 (start over)."""
        usable = rnd > 0 and (self.stored(name).root / f"server-r{rnd:04d}.safetensors").is_file()
        return rnd if usable and (not self.stateful(name) or self.keep == "all") else 0

    def states_at(self, name: str, rnd: int, only: Any = None) -> dict[int, ClientState]:
        """The remaining clients' states after round `rnd` (those still at their initial state omitted)."""
        stored, out = self.stored(name), {}
        for c in self.remaining if only is None else only:
            state = stored.client_state(self.data.client_ids[c], rnd)
            if state is not None:
                out[c] = state
        return out

    def original(self, name: str) -> Outcome:
        """The run's final state with the forgotten clients' personal state dropped (nothing retrained)."""
        server = self.stored(name).server(self.config.train.rounds)
        states = {}
        for c in self.remaining:
            path = self.dir / "models" / name / f"client-{self.data.client_ids[c]}.safetensors"
            if path.is_file():
                states[c] = decode_state(path.read_bytes(), ClientState, str(path), self.stored(name).client_like)
        return Outcome(server, states, 0, 0, 0.0, "the run's final state; the client(s) never trained")

    def nothing_shared(self, name: str) -> Outcome | None:
        """When every key is personal (`local`) no other client nor the server ever saw anything of the client:
        the final state without its personal state is the whole deletion."""
        if self.algo(name).personal != EVERYTHING:
            return None
        return dataclasses.replace(self.original(name), note="nothing is shared: deleting the personal state is complete")

    def probed(self) -> bool:
        """Whether a forgotten client carries the run's backdoor probe."""
        probe_id = self.config.forget.probe
        return bool(probe_id) and self.index[probe_id] in self.forgotten

    def member_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The forgotten clients' clean training samples (the membership-inference members)."""
        xs, ys = [], []
        for c in self.forgotten:
            a, b = self.data.train_offsets[c], self.data.train_offsets[c + 1]
            keep = torch.ones(b - a, dtype=torch.bool)
            if self.probed() and c == self.index[self.config.forget.probe]:
                f = self.config.forget
                keep[planted_rows(self.data, c, f.probe_fraction, self.seed) - a] = False
            xs.append(self.data.x_train[a:b][keep])
            ys.append(self.data.y_train[a:b][keep])
        return torch.cat(xs), torch.cat(ys)
