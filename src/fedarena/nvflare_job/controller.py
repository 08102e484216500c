"""The server side of an exported job: an NVFlare ModelController that runs fedarena's round loop.

`FedarenaController.run` trains each of the job's algorithms with `sim.engine.run_algorithm`, the round loop every
fedarena runtime shares: the round's clients are sampled there (`sim.engine.sample_clients`, from (seed, round,
client)), their broadcasts built by the algorithm, and the server steps with the algorithm's own `aggregate` over
the uploads in client order. Only the clients' work moves: :class:`SiteClients` is the loop's runtime
(`sim.runtime.Runtime`) whose `train` and `evaluate` send NVFlare tasks (``train``, ``validate``) to the sites with
`ModelController.send_model_and_wait` and check every reply (meta, keys, shapes, dtypes, finite values, the
client's sample count) before the round uses it. Personal state stays on the sites; the server holds none.

What it writes in its job workspace, under ``fedarena/``: ``result.json`` (per algorithm: every evaluation with
per-client accuracies, the sampled clients, the payload bytes as fedarena's codec counts them, rejected replies)
and ``received_keys.jsonl`` (the params keys of every reply, one line each).
"""

from __future__ import annotations

import logging
from itertools import accumulate
from pathlib import Path
from typing import Any, ClassVar

import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType  # type: ignore[import-untyped]
from nvflare.app_common.workflows.model_controller import ModelController  # type: ignore[import-untyped]

from fedarena import config as cfg
from fedarena.core.codec import Ledger, encode
from fedarena.core.params import same_params, split
from fedarena.core.types import Broadcast, ClientState, FedarenaError, FederatedData, Params, Upload
from fedarena.nvflare_job import common as c
from fedarena.sim.engine import AlgorithmRun, RunSpec, run_algorithm
from fedarena.sim.runtime import ClientEval, OnboardEval
from fedarena.tasks import input_dtype

log = logging.getLogger(__name__)


class FedarenaController(ModelController):
    """fedarena's round loop as an NVFlare workflow. `sites[i]` serves fedarena client i; `client_ids`,
    `train_sizes` and `test_sizes` are the clients' ids and split sizes as the export computed them (a reply
    stating another sample count is rejected); `input_shape` and `num_classes` make the model; `task_timeout`
    is NVFlare's per-task timeout in seconds (0: wait for every site)."""

    def __init__(self, algorithms: list[str], sites: list[str], client_ids: list[str], train_sizes: list[int],
                 test_sizes: list[int], input_shape: list[int], num_classes: int, task_timeout: int = 0) -> None:
        super().__init__(persistor_id="")  # no persistor: the initial model is fedarena's, from the seed
        self.algorithms, self.sites, self.client_ids = list(algorithms), list(sites), list(client_ids)
        self.train_sizes, self.test_sizes = list(train_sizes), list(test_sizes)
        self.input_shape, self.num_classes, self.task_timeout = list(input_shape), int(num_classes), int(task_timeout)
        if not len(self.sites) == len(self.client_ids) == len(self.train_sizes) == len(self.test_sizes):
            raise ValueError("sites, client_ids, train_sizes and test_sizes must have one entry per client")

    def run(self) -> None:
        config = c.read_config(Path(self.get_app_dir()))
        out = Path(self.get_run_dir()) / c.OUTPUT
        known = {client.name for client in self.engine.get_clients()}
        missing = [s for s in self.sites if s not in known]
        if missing:
            raise FedarenaError(f"the job's sites {missing} are not connected (connected: {sorted(known)})")
        results: dict[str, Any] = {}
        for name in self.algorithms:
            self.info(f"fedarena: training {name}")
            results[name] = self._train(config, name, out)
            c.write_json(out / "result.json", results)
        self.info(f"fedarena: results in {out / 'result.json'}")

    def _train(self, config: cfg.Config, name: str, out: Path) -> dict[str, Any]:
        algo = cfg.hyperparameters(config, name)
        base = cfg.make_config_task(config, tuple(self.input_shape), self.num_classes)
        task = cfg.algorithm_task(config, name, base)
        t = config.train
        spec = RunSpec(rounds=t.rounds, clients_per_round=t.clients_per_round or len(self.sites),  # resolved by the export
                       eval_every=t.eval_every, seed=config.run.seed)
        clients: list[SiteClients] = []

        def factory(algo: Any, task: Any, data: FederatedData, training: list[int], full: Params, seed: int,
                    dpsgd: Any) -> SiteClients:
            if dpsgd is not None:
                raise FedarenaError("DP-SGD is not exported to NVFlare")
            clients.append(SiteClients(self, algo, training, full, t.rounds, out))
            return clients[-1]

        run = run_algorithm(algo, task, self._stand_in(config), spec, factory)
        return _result(run, self.client_ids, clients[0])

    def _stand_in(self, config: cfg.Config) -> FederatedData:
        """The FederatedData the round loop sees on the server: ids and split sizes, no sample (features are a
        broadcast zero of the model's input dtype, labels zeros)."""
        zero = torch.zeros((), dtype=input_dtype(config.model.name))
        n, m, shape = sum(self.train_sizes), sum(self.test_sizes), tuple(self.input_shape)
        return FederatedData(
            name=config.data.name, client_ids=tuple(self.client_ids), x_train=zero.expand(n, *shape),
            y_train=torch.zeros(n, dtype=torch.int64), train_offsets=(0, *accumulate(self.train_sizes)),
            x_test=zero.expand(m, *shape), y_test=torch.zeros(m, dtype=torch.int64),
            test_offsets=(0, *accumulate(self.test_sizes)), num_classes=self.num_classes, partition="nvflare sites")


class SiteClients:
    """The round loop's runtime (`sim.runtime.Runtime`) whose clients are NVFlare sites."""

    protects_updates: ClassVar[bool] = False  # the job exports no privacy (refused by the export)
    transport: ClassVar[str] = "nvflare messages"

    def __init__(self, ctl: FedarenaController, algo: Any, training: list[int], full: Params, rounds: int,
                 out: Path) -> None:
        self.ctl, self.algo, self.rounds, self.out = ctl, algo, rounds, out
        self.ids = list(training)
        self.pooled = False
        self.states: dict[int, ClientState] = {}  # personal state lives on the sites
        self.ledger = Ledger()
        self.onboard_bytes = 0
        self.shared = c.expected_shapes(split(full, algo.personal)[0])  # what every upload must carry
        self.model = c.expected_shapes(full)
        self.index = {site: i for i, site in enumerate(ctl.sites)}
        self.rejected: list[dict[str, Any]] = []
        self.state_bytes: dict[int, int] = {}

    def _send(self, task: str, rnd: int, broadcasts: dict[int, Broadcast], params: Any, meta: Any) -> list[Any]:
        """One task per distinct broadcast (for a mean server step, one for the whole round: NVFlare sends it to the
        sites together), to its clients' sites; the replies as (client, FLModel), each from a site of those clients."""
        replies = []
        for b, group in _groups(broadcasts):
            if b.extra:
                raise FedarenaError(f"{self.algo.name}'s broadcast carries extra tensors {sorted(b.extra)}, which "
                                    "server_step='mean' does not send")
            model = FLModel(params=params(b), params_type=ParamsType.FULL, current_round=rnd, total_rounds=self.rounds,
                            meta={c.ALGORITHM: self.algo.name, c.ROUND: rnd, **meta(b)})
            targets = [self.ctl.sites[k] for k in group]
            for reply in self.ctl.send_model_and_wait(task_name=task, data=model, targets=targets,
                                                      timeout=self.ctl.task_timeout):
                site = reply.meta.get("client_name")
                k = self.index.get(site)
                keys = sorted(reply.params) if isinstance(reply.params, dict) else []
                c.append_line(self.out / c.RECEIVED_LOG, {"algorithm": self.algo.name, "task": task, "round": rnd,
                                                          "site": site, "keys": keys})
                if k not in group:
                    self._reject(rnd, str(site), f"a reply from site {site!r}, which was not sent this task")
                    continue
                replies.append((k, reply))
        return replies

    def _reject(self, rnd: int, who: str, reason: str) -> None:
        log.warning("round %d: rejected the reply of %s: %s", rnd, who, reason)
        self.rejected.append({"round": rnd, "client": who, "reason": reason})

    def _checked_meta(self, rnd: int, k: int, reply: Any, what: str) -> None:
        meta = reply.meta
        if meta.get(c.ALGORITHM) != self.algo.name or c.meta_int(meta, c.ROUND, what) != rnd \
                or c.meta_int(meta, c.CLIENT, what) != k:
            raise FedarenaError(f"{what}: meta names another algorithm, round or client")

    def train(self, rnd: int, broadcasts: dict[int, Broadcast], protect: Any = None) -> dict[int, Upload]:
        if protect is not None:
            raise FedarenaError("secure aggregation and DP are not exported to NVFlare")
        size = {id(b): len(encode(b)) for b in broadcasts.values()}
        for k, b in broadcasts.items():
            self.ledger.record(rnd, k, "down", size[id(b)])
        uploads = {}
        for k, reply in self._send(c.TRAIN, rnd, broadcasts, lambda b: c.to_arrays(b.params), lambda b: {}):
            what = f"round {rnd}: client {self.ctl.client_ids[k]} (site {self.ctl.sites[k]})"
            try:
                self._checked_meta(rnd, k, reply, what)
                n = c.meta_int(reply.meta, c.NUM_SAMPLES, what, least=1)
                if n != self.ctl.train_sizes[k]:
                    raise FedarenaError(f"{what}: {n} training samples, the export counted {self.ctl.train_sizes[k]}")
                params = c.from_arrays(reply.params, self.shared, what)
                metrics = {m: float(v) for m, v in (reply.metrics or {}).items() if isinstance(v, (int, float))}
                self.state_bytes[k] = c.meta_int(reply.meta, c.STATE_BYTES, what)
            except FedarenaError as exc:
                self._reject(rnd, self.ctl.client_ids[k], str(exc))
                continue
            uploads[k] = Upload(params=params, num_samples=n, metrics=metrics)
            self.ledger.record(rnd, k, "up", len(encode(uploads[k])))
        if not uploads:
            raise FedarenaError(f"round {rnd}: no site sent a valid update")
        return uploads

    def evaluate(self, rnd: int, broadcasts: dict[int, Broadcast], global_params: Params | None,
                 membership: bool = False) -> dict[int, ClientEval]:
        """Every client's personal model (and the global model) on its own test split, measured on its site.
        (Membership inference is measured by the in-process engines only.)"""
        def params(b: Broadcast) -> Any:
            arrays = c.to_arrays(b.params)
            return arrays if _global_mode(b, global_params) != c.GLOBAL_SENT else \
                arrays | c.to_arrays(global_params or {}, c.GLOBAL_PREFIX)

        out = {}
        for k, reply in self._send(c.EVALUATE, rnd, broadcasts, params,
                                   lambda b: {c.GLOBAL: _global_mode(b, global_params)}):
            what = f"round {rnd}: evaluation of client {self.ctl.client_ids[k]} (site {self.ctl.sites[k]})"
            try:
                self._checked_meta(rnd, k, reply, what)
                out[k] = _client_eval(reply.metrics, what, self.ctl.test_sizes[k], global_params is not None)
            except FedarenaError as exc:
                self._reject(rnd, self.ctl.client_ids[k], str(exc))
        return out

    def onboard(self, broadcasts: dict[int, Broadcast], initial: Params) -> dict[int, OnboardEval]:
        raise FedarenaError("new clients (data.new_clients) are not exported to NVFlare")

    def close(self) -> None:
        """Nothing to release: NVFlare owns the connections to the sites."""

    def summary(self) -> dict[str, Any]:
        return {"runtime": "nvflare", "storage_bytes_per_client": max(self.state_bytes.values(), default=0),
                "rejected": list(self.rejected)}


def _groups(broadcasts: dict[int, Broadcast]) -> list[tuple[Broadcast, list[int]]]:
    """The round's clients grouped by equal broadcasts (for a mean server step, one group: the server's params)."""
    groups: list[tuple[Broadcast, list[int]]] = []
    for k in sorted(broadcasts):
        b = broadcasts[k]
        same = [g for g in groups if same_params(g[0].params, b.params) and same_params(g[0].extra, b.extra)]
        if same:
            same[0][1].append(k)
        else:
            groups.append((b, [k]))
    return groups


def _global_mode(b: Broadcast, global_params: Params | None) -> str:
    if global_params is None:
        return c.NO_GLOBAL
    return c.GLOBAL_IS_BROADCAST if same_params(global_params, b.params) else c.GLOBAL_SENT


def _client_eval(metrics: Any, what: str, num_test: int, has_global: bool) -> ClientEval:
    """A validate reply's metrics, checked: accuracies in [0, 1], the test size the export counted, a global
    accuracy exactly when there is a global model, a validation accuracy exactly when there is a validation split."""
    m = metrics if isinstance(metrics, dict) else {}

    def number(key: str) -> float | None:
        v = m.get(key)
        return None if v is None else float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else -1.0

    acc, loss, n, gacc, vacc, nval = (number(k) for k in ("acc", "loss", "num_test", "global_acc", "val_acc", "num_val"))
    ok = (acc is not None and 0 <= acc <= 1 and loss is not None and n == num_test and (gacc is not None) == has_global
          and (gacc is None or 0 <= gacc <= 1) and nval is not None and nval >= 0 and (vacc is None) == (nval == 0)
          and (vacc is None or 0 <= vacc <= 1))
    if not ok:
        raise FedarenaError(f"{what}: inconsistent metrics {m}")
    return ClientEval(acc, loss, num_test, gacc, val_acc=vacc, num_val=int(nval))  # type: ignore[arg-type]


def _result(run: AlgorithmRun, ids: list[str], clients: SiteClients) -> dict[str, Any]:
    """What result.json keeps of one algorithm's run."""
    return {
        "evaluations": [{"round": e.round, "global_acc": e.global_acc, "personal_acc_mean": e.personal_acc_mean,
                         "per_client_acc": {ids[k]: a for k, a in zip(e.clients, e.per_client_acc)}}
                        for e in run.evaluations],
        "sampled": [[ids[k] for k in s] for s in run.sampled],
        "bytes": {"up_total": sum(clients.ledger.up.values()), "down_total": sum(clients.ledger.down.values())},
        "storage_bytes_per_client": clients.summary()["storage_bytes_per_client"],
        "rejected": clients.rejected,
    }
