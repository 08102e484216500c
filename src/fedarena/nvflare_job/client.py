"""The site side of an exported job: NVFlare's Client API loop around fedarena's client functions.

`main` (called by the job's script, ``custom/fedarena_client.py``) receives each task's FLModel with
``nvflare.client.receive``, runs what fedarena's in-process runtime runs for that client and sends the reply with
``nvflare.client.send``:

- ``train``: `sim.runtime.train_client` from the received broadcast and the client's state; the reply carries the
  upload's params (its shared keys only: checked before sending), its sample count and training metrics;
- ``validate``: `sim.runtime.personal_model`, then `sim.runtime.evaluate_client` on the client's own test split;
  the reply carries the metrics only.

The client's data is loaded here, as `compare` loads it for the config's seed (`common.load_client`); the random
streams derive from (seed, round, client), so a site computes the simulator's numbers. The client's state (its
personal keys, Ditto's personal model, ...) lives in ``<job workspace>/fedarena/state-<algorithm>.safetensors`` and
never enters a message. Beside it: ``sent_keys.jsonl`` (the params keys of every reply sent) and ``metrics.json``
(every evaluation of this client, per algorithm).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nvflare.client as flare  # type: ignore[import-untyped]
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType  # type: ignore[import-untyped]

from fedarena import config as cfg
from fedarena.core.device import CPU, resolve_device, to_device
from fedarena.core.params import nbytes, split
from fedarena.core.types import Broadcast, ClientState, FedarenaError
from fedarena.nvflare_job import common as c
from fedarena.sim.runtime import evaluate_client, initial_model, personal_model, task_on, train_client

log = logging.getLogger(__name__)


class Site:
    """One fedarena client on its NVFlare site: config, data, model per algorithm, and where its state lives."""

    def __init__(self, app_dir: Path, index: int, num_classes: int) -> None:
        self.config = c.read_config(app_dir)
        self.index, self.num_classes = index, num_classes
        self.folder = app_dir.resolve().parent / c.OUTPUT
        self.device = resolve_device(self.config.run.device)
        self.client_id, data = c.load_client(self.config, index)
        self.data = to_device(data, self.device)
        self.seed = self.config.run.seed

    def _setup(self, model: FLModel) -> tuple[str, int, Any, Any, Any]:
        """The task's algorithm name, round, algorithm object, model task and the run's initial model."""
        name = model.meta.get(c.ALGORITHM) if isinstance(model.meta, dict) else None
        if name not in self.config.run.algorithms:
            raise FedarenaError(f"a task for algorithm {name!r}, which is not one of this job's "
                                f"{list(self.config.run.algorithms)}")
        rnd = c.meta_int(model.meta, c.ROUND, f"a {name} task", least=1)
        algo = cfg.hyperparameters(self.config, name)
        base = cfg.make_config_task(self.config, tuple(self.data.x_train.shape[1:]), self.num_classes)
        task = cfg.algorithm_task(self.config, name, base)
        return name, rnd, algo, task_on(task, self.device), initial_model(task, self.seed)

    def _state(self, name: str, algo: Any, full: Any) -> ClientState:
        saved = c.load_state(self.folder / f"state-{name}.safetensors")
        return saved if saved is not None else algo.init_client(full)

    def train(self, model: FLModel) -> FLModel:
        name, rnd, algo, task, full = self._setup(model)
        shared = split(full, algo.personal)[0]
        b = Broadcast(params=c.from_arrays(model.params, c.expected_shapes(shared), f"round {rnd}: the {name} broadcast"))
        state = self._state(name, algo, full)
        upload, state = to_device(train_client(algo, task, to_device(b, self.device), to_device(state, self.device),
                                               self.data, self.seed, rnd, self.index), CPU)
        c.save_state(self.folder / f"state-{name}.safetensors", state)
        keys = sorted(upload.params)
        personal = [k for k in keys if algo.personal(k)]
        if personal or keys != sorted(shared):
            raise FedarenaError(f"round {rnd}: {name}'s upload holds keys {keys}; only the shared keys {sorted(shared)} "
                                f"may leave the client (personal: {personal})")
        c.append_line(self.folder / c.SENT_LOG, {"algorithm": name, "task": c.TRAIN, "round": rnd, "keys": keys})
        log.info("client %s trained %s round %d", self.client_id, name, rnd)
        meta = {c.ALGORITHM: name, c.ROUND: rnd, c.CLIENT: self.index, c.NUM_SAMPLES: int(upload.num_samples),
                c.STATE_BYTES: nbytes(state.params) + nbytes(state.extra)}
        return FLModel(params=c.to_arrays(upload.params), params_type=ParamsType.FULL, meta=meta,
                       metrics={k: float(v) for k, v in upload.metrics.items()})

    def evaluate(self, model: FLModel) -> FLModel:
        name, rnd, algo, task, full = self._setup(model)
        shared = split(full, algo.personal)[0]
        what = f"round {rnd}: the {name} evaluation"
        arrays = model.params if isinstance(model.params, dict) else {}
        own = {k: v for k, v in arrays.items() if not k.startswith(c.GLOBAL_PREFIX)}
        b = Broadcast(params=c.from_arrays(own, c.expected_shapes(shared), what))
        mode = model.meta.get(c.GLOBAL)
        if mode == c.NO_GLOBAL:
            g = None
        elif mode == c.GLOBAL_IS_BROADCAST:
            g = b.params
        elif mode == c.GLOBAL_SENT:
            model_keys = c.expected_shapes(full)
            sent = [k[len(c.GLOBAL_PREFIX):] for k in arrays if k.startswith(c.GLOBAL_PREFIX)]
            if not sent or not set(sent) <= set(model_keys):
                raise FedarenaError(f"{what}: the global model's keys {sorted(sent)} are not keys of the model")
            g = c.from_arrays(arrays, {k: model_keys[k] for k in sent}, what, c.GLOBAL_PREFIX)
        else:
            raise FedarenaError(f"{what}: meta {c.GLOBAL!r} must be one of none, broadcast, sent; got {mode!r}")
        state = self._state(name, algo, full)
        personal = personal_model(algo, task, to_device(b, self.device), to_device(state, self.device), self.data,
                                  self.seed, rnd, self.index)
        r = evaluate_client(task, personal, to_device(g, self.device), self.data)
        metrics = {"acc": r.acc, "loss": r.loss, "num_test": r.num_test, "num_val": r.num_val}
        metrics |= {k: v for k, v in (("global_acc", r.global_acc), ("val_acc", r.val_acc)) if v is not None}
        self._record(name, {"round": rnd, **metrics})
        c.append_line(self.folder / c.SENT_LOG, {"algorithm": name, "task": c.EVALUATE, "round": rnd, "keys": []})
        return FLModel(meta={c.ALGORITHM: name, c.ROUND: rnd, c.CLIENT: self.index}, metrics=metrics)

    def _record(self, name: str, evaluation: dict[str, Any]) -> None:
        """Add an evaluation to metrics.json (this client's evaluations per algorithm)."""
        path = self.folder / c.METRICS
        kept: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"client": self.client_id, "index": self.index,
                                                                     "algorithms": {}}
        kept["algorithms"].setdefault(name, []).append(evaluation)
        c.write_json(path, kept)


def main(app_dir: Path, index: int, num_classes: int) -> None:
    """Serve fedarena client `index` of the job whose app folder is `app_dir` until NVFlare ends the job. The site
    computes on one torch thread, as fedarena's Flower ClientApp does (tiny models train many times faster than on a
    contended thread pool; the digits test's numbers are the same on 1 and 2 threads)."""
    torch.set_num_threads(1)
    flare.init()
    site = Site(app_dir, index, num_classes)
    log.info("site %s serves fedarena client %s (index %d)", flare.get_site_name(), site.client_id, index)
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        task = flare.get_task_name()
        if task == c.TRAIN:
            flare.send(site.train(model))
        elif task == c.EVALUATE:
            flare.send(site.evaluate(model))
        else:
            raise FedarenaError(f"unknown task {task!r}; a fedarena job sends {c.TRAIN!r} and {c.EVALUATE!r}")
