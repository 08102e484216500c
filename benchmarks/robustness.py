"""Issue 18's attack table: benign clients' personal accuracy under each poisoning attack and server aggregation rule,
global and personalized algorithms side by side, on identical seeded clients.

    python benchmarks/robustness.py --out runs/robustness            # the full grid (resumable: rerun to continue)
    python benchmarks/robustness.py --out runs/robustness --table    # only (re)write table.md from what exists

Grid: digits, 20 clients (every client each round), 20% malicious, cells shards-2 and dirichlet-0.1; attacks none,
label-flip, sign-flip, scale, gaussian, alie, backdoor; aggregators mean, median, trimmed-mean, krum; algorithms fedavg,
fedprox, fedper, fedrep, ditto, fedavg-ft, local; each (cell, attack, aggregator) is one ordinary `fedarena compare`
run directory `OUT/<cell>/<attack>/<aggregator>/` (skipped when its summary.json exists). Extra `--set` overrides apply
to every run. Untuned: every algorithm at the comparison's defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from fedarena import config as cfg
from fedarena.experiments.compare import run_compare

CELLS = {"shards-2": ["data.partition=shards", "data.shards_per_client=2"],
         "dirichlet-0.1": ["data.partition=dirichlet", "data.alpha=0.1"]}
ATTACKS = ("none", "label-flip", "sign-flip", "scale", "gaussian", "alie", "backdoor")
AGGREGATORS = ("mean", "median", "trimmed-mean", "krum")
ALGORITHMS = ("fedavg", "fedprox", "fedper", "fedrep", "ditto", "fedavg-ft", "local")
BASE = ["data.name=digits", "data.num_clients=20", "train.clients_per_round=20", "attack.malicious=0.2",
        f"run.algorithms={json.dumps(list(ALGORITHMS))}"]


def run_grid(out: Path, seeds: int, sets: list[str]) -> None:
    for cell, cell_sets in CELLS.items():
        for attack in ATTACKS:
            for agg in AGGREGATORS:
                where = out / cell / attack / agg
                if (where / "summary.json").exists():
                    continue
                config = cfg.build(None, {}, [*BASE, *cell_sets, f"attack.kind={attack}", f"robust.aggregator={agg}",
                                              f"run.seeds={seeds}", *sets])
                start = time.perf_counter()
                run_compare(config, where)
                logging.info("%s %s %s: %.0f s", cell, attack, agg, time.perf_counter() - start)


def cell_text(runs: list[dict], targeted: bool) -> str:
    """Mean over seeds of personal_acc_mean / worst-10% (and backdoor success), in percent; a diverged run says so."""
    def mean(key: str, final: bool = True) -> float | None:
        values = [(r["final"] if final else r)[key] for r in runs]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    text = f"{100 * mean('personal_acc_mean'):.1f} / {100 * mean('personal_acc_worst10'):.1f}"
    hit = mean("attack_success", final=False) if targeted else None
    if hit is not None:
        text += f" (bd {100 * hit:.0f})"
    return text + (" div" if any(r["diverged"] for r in runs) else "")


def write_table(out: Path) -> str:
    lines = ["Per cell: benign clients' personal accuracy, mean / worst 10% (%), mean over seeds; `bd`: backdoor "
             "success on the benign clients' models (%); `div`: the server's model diverged (accuracy 0).", ""]
    for cell in CELLS:
        for attack in ATTACKS:
            summaries = {agg: json.loads((out / cell / attack / agg / "summary.json").read_text())
                         for agg in AGGREGATORS if (out / cell / attack / agg / "summary.json").exists()}
            if not summaries:
                continue
            first = next(iter(summaries.values()))
            seeds = first["seeds"]
            lines += [f"### {cell}, attack: {attack} (seeds {', '.join(map(str, seeds))})", "",
                      "| algorithm | " + " | ".join(summaries) + " |", "|---|" + "---|" * len(summaries)]
            for name in ALGORITHMS:
                cells = [cell_text([r for r in s["runs"] if r["algorithm"] == name], attack in ("backdoor", "scale"))
                         for s in summaries.values()]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    text = "\n".join(lines)
    (out / "table.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="sets", help="SECTION.KEY=VALUE for every run")
    parser.add_argument("--table", action="store_true", help="only write OUT/table.md from the finished runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these small models train fastest on one, and the numbers are "
                             "bit for bit those of the same thread count)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if not args.table:
        run_grid(args.out, args.seeds, args.sets)
    print(write_table(args.out))


if __name__ == "__main__":
    main()
