"""The default study: what a bare ``fedarena compare`` runs, so that its report measures every claim.

One comparison answers the accuracy, communication, convergence and storage rows; the others need an experiment of
their own. The study runs them in order, into one study directory (built under a temporary name beside it and
renamed into place when complete, like a run directory):

1. **the comparison** (the directory itself, an ordinary run directory): global FedAvg, FedProx and FedAdam (a
   server optimizer), personalized FedPer and Ditto, baselines local, FedAvg-FT and centralized, on digits split by
   Dirichlet(0.3) over 20 clients with 20% of them held out as new clients (the onboarding row);
2. from its result, **best pFL** and **best global** (report/claims.choose_sides) go through four sub-studies:
   - ``study/sweep``: the same comparison re-partitioned over a few heterogeneity cells (ideal data similarity);
   - ``study/privacy``: the same comparison under central user-level DP at one budget and without DP (privacy cost);
   - ``study/attack``: the same comparison with a share of the clients attacking (robustness to poisoning);
   - ``study/forget``: the same comparison with a backdoor planted in one training client, which is then forgotten
     (right to be forgotten);
3. ``study.json``: the plan, the two sides, and per step its directory, seconds and the command that reruns it.

Every sub-study's config is built the way its command builds it (``--config`` = the comparison's config.toml plus
the step's flags), so each command in study.json reproduces its step bit for bit. The report reads study.json
(report/render.load_summary). A data, algorithm, client or round flag on ``compare`` runs what it names instead.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fedarena import config as cfg
from fedarena.core.types import FedarenaError
from fedarena.experiments.compare import run_compare
from fedarena.experiments.forget.run import PROBE_METHODS, forget
from fedarena.experiments.privacy_sweep import run_privacy_sweep
from fedarena.experiments.rundir import atomic_dir, check_out_dir
from fedarena.experiments.sweep import run_sweep
from fedarena.report import measures as m
from fedarena.report.claims import choose_sides
from fedarena.report.study import STUDY_FORMAT
from fedarena.report.sweep import Cell

ALGORITHMS = ("fedavg", "fedprox", "fedadam", "fedper", "ditto", "local", "fedavg-ft", "centralized")
STEPS = ("comparison", "sweep", "privacy", "attack", "forget")  # in the order they run


@dataclass(frozen=True)
class Plan:
    """What the study runs. Seeds are consecutive from the run's seed; every sub-study uses the first `sub_seeds`
    of the comparison's seeds, so the comparison is its clean reference on the same clients."""

    name: str
    rounds: int
    seeds: int  # of the comparison
    sub_seeds: int  # of each sub-study but the forget probe, which runs one (`fedarena forget` takes single-seed runs)
    cells: tuple[str, ...]  # heterogeneity cells of the sweep (report/sweep.Cell)
    epsilon: float = 8.0  # the privacy sub-study's user-level budget (central DP-FedAvg, delta 1e-5)
    attack: str = "sign-flip"  # the attack sub-study's attack (sim/attacks.py), with the plain mean
    malicious: float = 0.2  # share of the training clients that attack
    new_clients: float = 0.2  # share of the clients held out and onboarded after training


FULL = Plan("full", rounds=30, seeds=3, sub_seeds=3, cells=("iid", "dirichlet-1", "dirichlet-0.1", "shards-2"))
QUICK = Plan("quick", rounds=10, seeds=1, sub_seeds=1, cells=("iid", "shards-2"))


def comparison_config(plan: Plan, seed: int) -> cfg.Config:
    """The study's comparison: the defaults, with the study's algorithms, new clients, rounds and seeds."""
    return cfg.build(None, {"data": {"new_clients": plan.new_clients}, "train": {"rounds": plan.rounds},
                            "run": {"algorithms": ",".join(ALGORITHMS), "seed": seed, "seeds": plan.seeds}}, [])


@dataclass(frozen=True)
class Step:
    """One sub-study: its name (its directory is study/<name>), its command and the flags, --set overrides and
    extra arguments the command takes; its config is built the way that command builds it."""

    name: str
    command: str  # compare | sweep
    flags: dict[str, dict[str, Any]]
    sets: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    def config(self, main_toml: Path) -> cfg.Config:
        return cfg.build(str(main_toml), self.flags, list(self.sets))

    def cli(self, study_dir: Path, threads: int) -> str:
        """The command that reruns this step from the study's config.toml, into a directory beside the study."""
        names = {"algorithms": "--algorithms", "seeds": "--seeds", "kind": "--attack", "malicious": "--malicious",
                 "probe": "--forget-probe"}
        flags = [x for section in self.flags.values() for k, v in section.items() for x in (names[k], str(v))]
        sets = [x for s in self.sets for x in ("--set", s)]
        return shlex.join(["fedarena", self.command, "--config", str(study_dir / "config.toml"), *flags, *sets,
                           *self.args, "--threads", str(threads), "--out", f"{study_dir}-{self.name}-again"])


# The sub-studies other than the forget probe keep no forget material (server checkpoints per round: about 830 MB
# over the full study's sweep, privacy and attack runs); the comparison and the forget probe keep theirs.
NO_FORGET_MATERIAL = ("forget.keep=none",)


def steps(plan: Plan, pfl: str, glob: str, probe: str) -> list[Step]:
    both = {"algorithms": f"{pfl},{glob}", "seeds": plan.sub_seeds}
    return [
        Step("sweep", "sweep", {"run": both}, NO_FORGET_MATERIAL, ("--cells", ",".join(plan.cells))),
        Step("privacy", "sweep", {"run": both}, NO_FORGET_MATERIAL, ("--epsilons", repr(plan.epsilon))),
        Step("attack", "compare", {"run": both, "attack": {"kind": plan.attack, "malicious": plan.malicious}},
             NO_FORGET_MATERIAL),
        Step("forget", "compare", {"run": {"algorithms": f"{pfl},{glob}", "seeds": 1}, "forget": {"probe": probe}}),
    ]


def probe_client(summary: dict[str, Any]) -> str:
    """The forget probe: the first client that trains on the comparison's first seed (not held out as new)."""
    first = min(r["seed"] for r in summary["runs"])
    held = set(next(r for r in summary["runs"] if r["seed"] == first)["new_clients"]["clients"])
    return next(c for c in summary["dataset"]["client_ids"] if c not in held)


def _run_step(step: Step, config: cfg.Config, out: Path, plan: Plan, final: Path) -> None:
    """Run `step` into `out`, the directory that will be `final` once the study is renamed into place."""
    from fedarena.report.render import write_privacy_sweep_report, write_sweep_report

    if step.name == "sweep":
        write_sweep_report(run_sweep(config, [Cell.parse(c) for c in plan.cells], out), out)
    elif step.name == "privacy":
        write_privacy_sweep_report(run_privacy_sweep(config, [plan.epsilon], out), out)
    else:
        run_compare(config, out)
        if step.name == "forget":
            probe = config.forget.probe
            forget(out, [probe], list(PROBE_METHODS), out / f"forget-{probe}", recorded_as=final)


def run_study(plan: Plan, seed: int, out: Path, on_step: Callable[[str, int, int], None] | None = None,
              on_round: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run the study into `out` (absent or empty); return study.json's content. `on_step(name, index, total)` is
    called before each step; `on_round` counts the comparison's rounds."""
    check_out_dir(out)
    out, threads = out.resolve(), torch.get_num_threads()  # the commands name absolute paths and the thread count
    started, log = time.monotonic(), []
    with atomic_dir(out) as tmp:
        if on_step:
            on_step(STEPS[0], 0, len(STEPS))
        summary = run_compare(comparison_config(plan, seed), tmp, on_round)
        log.append({"name": STEPS[0], "dir": ".", "seconds": time.monotonic() - started,
                    "command": shlex.join(["fedarena", "compare", "--config", str(out / "config.toml"), "--threads",
                                           str(threads), "--out", f"{out}-again"])})
        sides = choose_sides(m.by_algorithm(summary))
        if not (sides.pfl and sides.glob):
            raise FedarenaError(f"the study's comparison has no best pFL or best global algorithm: {sides}")
        probe = probe_client(summary)
        for i, step in enumerate(steps(plan, sides.pfl, sides.glob, probe), start=1):
            if on_step:
                on_step(step.name, i, len(STEPS))
            t0 = time.monotonic()
            _run_step(step, step.config(tmp / "config.toml"), tmp / "study" / step.name, plan,
                      out / "study" / step.name)
            log.append({"name": step.name, "dir": f"study/{step.name}", "seconds": time.monotonic() - t0,
                        "command": step.cli(out, threads)})
        study = {"format": STUDY_FORMAT, "plan": asdict(plan), "seed": seed, "threads": threads,
                 "best_pfl": sides.pfl, "best_global": sides.glob, "forget_probe": probe, "steps": log,
                 "seconds": time.monotonic() - started}
        partial = tmp / f".study.json.partial-{os.getpid()}"
        partial.write_text(json.dumps(study, indent=2, allow_nan=False) + "\n")
        partial.replace(tmp / "study.json")
    return study
