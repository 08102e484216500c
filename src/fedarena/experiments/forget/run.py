"""`fedarena forget` as a library call: remove clients from every algorithm of a run, write a new
directory (models without them, audit.json, forget.json), never touch the source run.

forget.json holds, per (algorithm, method): membership-inference AUC on the forgotten clients' training
samples and backdoor success (probe.py) before deletion, after it and for the exact retrain; accuracy of the
remaining clients after it and after retrain; its cost (rounds, bytes, seconds) beside retrain's; and the
bytes the run kept to make deletion possible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from fedarena.core.types import FedarenaError
from fedarena.experiments.forget.federaser import federaser
from fedarena.experiments.forget.retrain import retrain
from fedarena.experiments.forget.source import Outcome, Source
from fedarena.experiments.rundir import atomic_dir, check_out_dir, read_json, save_models
from fedarena.forget import probe
from fedarena.forget.store import Recorder
from fedarena.sim.runtime import evaluate_client, personal_model

log = logging.getLogger(__name__)

METHODS: dict[str, Callable[..., Outcome]] = {"retrain": retrain, "federaser": federaser}
PROBE_METHODS = ("retrain", "federaser")  # what `compare --forget-probe` (and the default study) forgets with


def measure(src: Source, name: str, outcome: Outcome) -> dict[str, float | None]:
    """The forgotten clients' traces in the remaining clients' models, and those clients' accuracy."""
    algo, task, data = src.algo(name), src.task_of(name), src.data
    fresh = algo.init_client(src.initial)  # a client that kept no state is at its initial one

    def state_of(c: int) -> Any:  # `centralized`'s one pseudo-client 0 serves every client
        return outcome.states.get(0 if not algo.federated else c, fresh)

    g = algo.global_model(outcome.server)
    rnd = src.config.train.rounds
    x_in, y_in = src.member_samples()
    members = [data.client(c) for c in src.forgotten]
    x_out, y_out = torch.cat([d.x_test for d in members]), torch.cat([d.y_test for d in members])
    probed = src.probed()
    value, target = probe.trigger_value(data), src.config.forget.probe_target
    aucs, correct, tested, hits, eligible, g_correct = [], 0.0, 0, 0.0, 0, 0.0
    for c in src.remaining:
        d = data.client(c)
        model = personal_model(algo, task, algo.broadcast(outcome.server, c), state_of(c), d, src.seed, rnd, c)
        aucs.append(probe.mia_auc(task, model, x_in, y_in, x_out, y_out))
        ev = evaluate_client(task, model, g, d)
        correct, tested = correct + ev.acc * d.num_test, tested + d.num_test
        g_correct += (ev.global_acc or 0.0) * d.num_test
        if probed:
            keep = int((d.y_test != target).sum())
            success = probe.backdoor_success(task, model, d.x_test, d.y_test, target, value)
            if success is not None:
                hits, eligible = hits + success * keep, eligible + keep
    return {
        "mia_auc": sum(aucs) / len(aucs),
        "backdoor": hits / eligible if probed and eligible else None,
        "remaining_acc": correct / tested,
        "remaining_global_acc": g_correct / tested if g is not None else None,
    }


def forget_algorithm(src: Source, name: str, methods: list[str], verify: bool,
                     recorder: Recorder | None = None) -> tuple[list[dict[str, Any]], dict[str, Outcome]]:
    """One algorithm: before, each method, and retrain as the reference (when `verify` or asked for)."""
    algo = src.algo(name)
    before = measure(src, name, src.original(name))
    reference = retrain(src, name, recorder) if verify or "retrain" in methods else None
    ref = measure(src, name, reference) if reference else None
    rows, outcomes = [], {}
    for method in methods:
        row: dict[str, Any] = {"algorithm": name, "family": algo.family, "method": method, "refused": None}
        try:
            outcome = reference if method == "retrain" else METHODS[method](src, name)
        except FedarenaError as exc:
            log.info("%s", exc)  # recorded: forget.json's row and the forget table say why
            rows.append(row | {"refused": str(exc)})
            continue
        outcomes[method] = outcome
        after = measure(src, name, outcome)
        row |= {
            "mia_auc_before": before["mia_auc"], "mia_auc_after": after["mia_auc"],
            "mia_auc_retrain": ref and ref["mia_auc"],
            "backdoor_before": before["backdoor"], "backdoor_after": after["backdoor"],
            "backdoor_retrain": ref and ref["backdoor"],
            "remaining_acc_before": before["remaining_acc"],
            "remaining_acc_after": after["remaining_acc"], "remaining_acc_retrain": ref and ref["remaining_acc"],
            "remaining_global_acc_after": after["remaining_global_acc"],
            "remaining_global_acc_retrain": ref and ref["remaining_global_acc"],
            "rounds": outcome.rounds, "bytes": outcome.bytes, "seconds": outcome.seconds,
            "retrain_rounds": reference and reference.rounds, "retrain_bytes": reference and reference.bytes,
            "retrain_seconds": reference and reference.seconds,
            "storage_bytes": src.stored(name).nbytes(), "note": outcome.note,
        }
        rows.append(row)
    return rows, outcomes


def forget(run_dir: Path, clients: list[str], methods: list[str], out: Path, algorithms: list[str] | None = None,
           verify: bool = True, recorded_as: Path | None = None) -> dict[str, Any]:
    """Write `out` (absent or empty): per algorithm, the first method's models without `clients`. forget.json and
    audit.json name the source as `recorded_as` where given (the path `run_dir` will have: a default study builds
    its directories under a temporary name)."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise FedarenaError(f"unknown forget method(s) {', '.join(bad) or '(none)'}; valid: {', '.join(METHODS)}")
    check_out_dir(out)
    src = Source.load(run_dir, clients)
    names = algorithms or list(src.config.run.algorithms)
    with atomic_dir(out) as tmp:
        rows, audit_models = [], {}
        for name in names:
            src.algo(name)
            recorder = Recorder(src.keep, src.data.client_ids, updates_visible=not src.config.privacy.secagg)
            got, outcomes = forget_algorithm(src, name, methods, verify, recorder)
            rows += got
            chosen = next((m for m in methods if m in outcomes), None)
            if chosen is None:
                continue
            algo, o = src.algo(name), outcomes[chosen]
            save_models(tmp / "models" / name, algo, o.server, o.states, src.data.client_ids)
            if chosen == "retrain" and o.rounds:
                _keep(tmp / "forget" / name, src, name, recorder, src.config.train.rounds - o.rounds)
            audit_models[name] = {"method": chosen, "note": o.note, "files": {
                str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((tmp / "models" / name).glob("*.safetensors"))}}
        ids = [src.data.client_ids[c] for c in src.forgotten]
        result = {"source": str(recorded_as or run_dir), "forgotten": ids, "methods": methods,
                  "trained_on": read_json(run_dir / "summary.json").get("engine"), "recomputed_on": src.engine,
                  "runs": rows}
        (tmp / "forget.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        (tmp / "audit.json").write_text(json.dumps(_audit(recorded_as or src.dir, ids, audit_models), indent=2) + "\n")
        shutil.copy(run_dir / "config.toml", tmp / "config.toml")
    return result


def _keep(root: Path, src: Source, name: str, recorder: Recorder, start: int) -> None:
    """The retrained run's forget material: the source's for rounds before the resume point (untouched
    by the forgotten clients), the retrain's own after it."""
    root.mkdir(parents=True)
    forgotten = {src.data.client_ids[c] for c in src.forgotten}
    for p in src.stored(name).root.glob("*-r*.safetensors"):
        early = int(p.name.rsplit("-r", 1)[1].split(".")[0]) <= start
        if early and not any(p.name.startswith(f"client-{c}-") for c in forgotten):
            shutil.copy(p, root / p.name)
    files = recorder.all_files()
    new = json.loads(files.pop("norms.json", b"{}"))
    if not src.config.privacy.secagg:  # under secure aggregation no update norms were ever kept
        norms = {str(r): v for r, v in src.stored(name).norms().items() if r <= start} | new
        (root / "norms.json").write_text(json.dumps(dict(sorted(norms.items(), key=lambda kv: int(kv[0]))), indent=1))
    for fname, payload in files.items():
        (root / fname).write_bytes(payload)


def _audit(source: Path, ids: list[str], models: dict[str, Any]) -> dict[str, Any]:
    return {
        "forgotten": ids,
        "source": str(source),
        "deleted": [
            f"personal state models/<algorithm>/client-{c}.safetensors (not copied)" for c in ids
        ] + [f"client-state snapshots forget/<algorithm>/client-{c}-r*.safetensors and its update norms (not copied)"
             for c in ids] + ["the client(s) take no part in any later round (excluded from sampling)"],
        "remains": [
            f"the source run directory {source} is unchanged and still holds the client(s)' personal state, "
            "update norms and data references: delete it once this directory is accepted",
            "the clients' raw data stays where it was loaded from (fedarena never copies it)",
        ],
        "models": models,
    }
