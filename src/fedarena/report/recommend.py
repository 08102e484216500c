"""`fedarena recommend`: which family and algorithm to deploy, from the measured numbers of a run.

The rules are short and stated in every recommendation (docs/report.md lists them):

- **Candidates**: every algorithm that runs federated on the clients' own data, `local` included (it
  is the "do not federate" answer); `centralized` pools the data and is only the ceiling.
- **As good as the best** (the acceptable set): candidates whose mean `personal_acc_mean` is not
  worse than the most accurate candidate's beyond noise: with >= 2 seeds, the paired difference is
  within noise or better; with one seed, within 1 percentage point (the noise is unknown).
- **accuracy**: the highest mean `personal_acc_mean`.
- **worst-client**: the highest mean `personal_acc_worst10`.
- **communication**: the fewest bytes (up + down) to reach the comparison's target, among the
  candidates that reach it; if none does, the fewest bytes per round within the acceptable set.
- **simplicity**: within the acceptable set, the fewest moving parts: number of hyperparameters
  + 2 if clients keep state between rounds + 1 if there is no single global model to serve.
- **privacy**: in a default study (``study/privacy``: best pFL and best global under one central user-level DP
  budget), the most accurate under that budget of those two and of any candidate that uploads nothing;
  elsewhere privacy is not measured, so a stated proxy: within the acceptable set, the fewest bytes uploaded
  per round (what leaves a device).

Ties go to the candidate listed first in the run. The persona changes the order of the facts and the
words of the headline, never the choice or the numbers.

Every recommendation says which hyperparameters it rests on: summary.json's tuning label ("tuned (N trials,
budget B client-rounds per algorithm)", "untuned defaults" or "untuned (hyperparameters as configured)"), and
the chosen algorithm's values with, when tuned, what its search found (`tuning` in `--json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from fedarena.core.types import FedarenaError
from fedarena.report import measures as m
from fedarena.report import study
from fedarena.report import tuning as tu
from fedarena.report.claims import choose_sides
from fedarena.report.format import accuracy, pct, signed_pp, size, with_spread
from fedarena.report.measures import Run

PERSONAS = ("cto", "architect", "ml-engineer")
PRIORITIES = ("accuracy", "worst-client", "communication", "simplicity", "privacy")
ONE_SEED_TOLERANCE = 0.01  # accuracy, as a fraction: 1 percentage point

RULES = {
    "accuracy": "the candidate with the highest mean per-client accuracy (personal_acc_mean)",
    "worst-client": "the candidate with the highest mean accuracy of its worst 10% of clients",
    "communication": ("the candidate that reaches the target with the fewest bytes (up + down); if none "
                      "reaches it, the fewest bytes per round among those as accurate as the best"),
    "simplicity": ("among the candidates as accurate as the best, the fewest moving parts: hyperparameters "
                   "+ 2 if clients keep state between rounds + 1 if there is no single global model"),
    "privacy": ("privacy is not measured in this run; proxy: among the candidates as accurate as the best, "
                "the fewest bytes uploaded per round (what leaves a device)"),
}
PRIVACY_MEASURED_RULE = ("the most accurate under the same central user-level DP budget, among the two algorithms the "
                         "default study's privacy sweep ran (best pFL and best global) and any candidate that uploads "
                         "nothing (which needs no DP: its own accuracy counts)")
ACCEPTABLE_RULE = ("as accurate as the best: not below the most accurate candidate beyond noise (95% CI of "
                   "the paired per-seed difference), or within 1 percentage point with a single seed")

KIND_WORDS = {  # how each persona names what is deployed
    "cto": {"global": "one shared model", "personalized": "a personalized model per client",
            "fine-tuned": "one shared model, fine-tuned on each client", "local": "no federation (each client trains alone)"},
    "architect": {"global": "a global model (one set of weights served to every client)",
                  "personalized": "personalized FL (shared part on the server, personal part kept on each client)",
                  "fine-tuned": "a global model fine-tuned on each client after training",
                  "local": "local-only training (no server, nothing on the wire)"},
    "ml-engineer": {"global": "global FL", "personalized": "pFL", "fine-tuned": "FedAvg + local fine-tuning",
                    "local": "local-only baseline"},
}
FACT_ORDER = {  # emphasis per persona: which facts come first
    "cto": ("gain_vs_global", "gain_vs_best", "clients_worse", "bytes_per_round", "storage", "accuracy", "worst10",
            "gain_vs_local", "rounds_to_target", "bytes_to_target", "ceiling_gap", "under_dp"),
    "architect": ("storage", "bytes_per_round", "bytes_to_target", "rounds_to_target", "gain_vs_global", "gain_vs_best",
                  "clients_worse", "accuracy", "worst10", "gain_vs_local", "ceiling_gap", "under_dp"),
    "ml-engineer": ("accuracy", "worst10", "gain_vs_global", "gain_vs_best", "gain_vs_local", "ceiling_gap", "clients_worse",
                    "rounds_to_target", "bytes_to_target", "bytes_per_round", "storage", "under_dp"),
}


@dataclass(frozen=True)
class Recommendation:
    persona: str
    priority: str
    algorithm: str
    family: str
    hyperparameters: dict[str, Any]
    headline: str
    rule: str
    facts: tuple[tuple[str, str], ...]  # (key, sentence) in the persona's order
    numbers: dict[str, float | int | None]  # the values the facts rest on
    watch: tuple[str, ...]
    rules: dict[str, str]
    # what it rests on: {status, label, values (every value the chosen algorithm trained with), search (its
    # runs[].tuning without the space, or null when untuned)}
    tuning: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _kind(run: Run) -> str:
    if run["family"] in ("global", "personalized"):
        return run["family"]
    return "local" if run["algorithm"] == "local" else "fine-tuned"


def _moving_parts(run: Run) -> int:
    return len(run["hyperparameters"]) + 2 * (run["storage_bytes_per_client"] > 0) + (run["final"]["global_acc"] is None)


def _acceptable(groups: dict[str, list[Run]], names: list[str]) -> list[str]:
    best = max(names, key=lambda a: (m.over_seeds(groups[a], m.acc_mean).mean, -names.index(a)))
    out = []
    for a in names:
        d = m.paired(groups[a], groups[best], lambda x, y: m.acc_mean(x) - m.acc_mean(y))
        ok = (d.mean >= 0 or d.within_noise) if d.noise_known else d.mean >= -ONE_SEED_TOLERANCE
        if ok:
            out.append(a)
    return out


def under_dp(summary: dict[str, Any]) -> dict[str, float]:
    """A default study's per-client accuracy under its DP budget, per algorithm it ran ({} outside a study)."""
    privacy = (summary.get("study") or {}).get("privacy")
    cells = [c for c in (privacy or {}).get("cells", ()) if c["epsilon_target"] is not None]
    return {n: a["personal_acc_mean"] for n, a in cells[0]["algorithms"].items()} if cells else {}


def choose(groups: dict[str, list[Run]], priority: str, dp: dict[str, float] | None = None) -> str:
    """The algorithm the rule for `priority` picks (see the module docstring); `dp`: :func:`under_dp`."""
    names = [a for a, rs in groups.items() if rs[0]["federated"]]
    if not names:
        raise FedarenaError("no federated algorithm in this run to recommend (only centralized)")

    def mean(a: str, metric: m.Metric) -> float | None:
        return m.over_seeds(groups[a], metric).mean

    def lowest(pool: list[str], key: Callable[[str], float]) -> str:
        return min(pool, key=lambda a: (key(a), -mean(a, m.acc_mean), names.index(a)))

    if priority == "accuracy":
        return max(names, key=lambda a: (mean(a, m.acc_mean), -names.index(a)))
    if priority == "worst-client":
        return max(names, key=lambda a: (mean(a, m.acc_worst10), -names.index(a)))
    acceptable = _acceptable(groups, names)
    if priority == "communication":
        reached = [a for a in names if mean(a, m.bytes_to_target) is not None]
        if reached:
            return lowest(reached, lambda a: mean(a, m.bytes_to_target))
        return lowest(acceptable, lambda a: mean(a, m.bytes_per_round))
    if priority == "simplicity":
        return lowest(acceptable, lambda a: _moving_parts(groups[a][0]))
    if priority == "privacy":
        if dp:  # a candidate that uploads nothing needs no DP: its accuracy under the budget is its own
            private = {a: dp[a] if a in dp else mean(a, m.acc_mean) for a in names
                       if a in dp or mean(a, m.bytes_up_per_round) == 0}
            return max(private, key=lambda a: (private[a], -names.index(a)))
        return lowest(acceptable, lambda a: mean(a, m.bytes_up_per_round))
    raise FedarenaError(f"unknown priority '{priority}'; valid: {', '.join(PRIORITIES)}")


def _clients_worse(chosen: list[Run], reference: list[Run]) -> tuple[int, int]:
    """(clients whose personal accuracy under `chosen` is below the reference's global model on their
    own test split, clients compared), pooled over the seeds both ran."""
    ref = {r.get("seed"): r["final"]["global_acc_per_client"] for r in reference}
    worse = total = 0
    for run in chosen:
        g = ref.get(run.get("seed"))
        if not g:
            continue
        for client, acc in run["final"]["personal_acc_per_client"].items():
            if client in g:
                total += 1
                worse += acc < g[client]
    return worse, total


def recommend(summary: dict[str, Any], persona: str = "architect", priority: str = "accuracy") -> Recommendation:
    """The recommendation for `priority`, worded for `persona`, from a summary.json."""
    if persona not in PERSONAS:
        raise FedarenaError(f"unknown persona '{persona}'; valid: {', '.join(PERSONAS)}")
    if priority not in PRIORITIES:
        raise FedarenaError(f"unknown priority '{priority}'; valid: {', '.join(PRIORITIES)}")
    groups = m.by_algorithm(summary)
    dp = under_dp(summary)
    name = choose(groups, priority, dp)
    run = groups[name][0]
    numbers, facts, watch = _evidence(summary, groups, name, priority)
    order = [k for k in FACT_ORDER[persona] if k in facts]
    return Recommendation(
        persona, priority, name, run["family"], dict(run["hyperparameters"]),
        _headline(persona, run, numbers, choose_sides(groups).glob),
        PRIVACY_MEASURED_RULE if priority == "privacy" and dp else RULES[priority],
        tuple((k, facts[k]) for k in order), numbers, tuple(watch),
        {"candidates": "every algorithm that federates on the clients' own data (local included; centralized excluded)",
         "acceptable": ACCEPTABLE_RULE,
         "priority": PRIVACY_MEASURED_RULE if priority == "privacy" and dp else RULES[priority]},
        tuning=_tuning(summary, name),
    )


def _tuning(summary: dict[str, Any], name: str) -> dict[str, Any]:
    block = tu.block(summary)
    mine = next(c for c in tu.chosen(summary) if c.algorithm == name)
    search = None if mine.search is None else {k: v for k, v in mine.search.items() if k != "space"}
    return {"status": block.get("status", "untuned"), "label": tu.label(summary), "values": mine.values,
            "search": search}


def all_priorities(summary: dict[str, Any], persona: str = "architect") -> list[Recommendation]:
    return [recommend(summary, persona, p) for p in PRIORITIES]


def _evidence(summary: dict[str, Any], groups: dict[str, list[Run]], name: str,
              priority: str) -> tuple[dict[str, float | int | None], dict[str, str], list[str]]:
    """(numbers, facts by key, what to watch) for the chosen algorithm; the same for every persona."""
    runs = groups[name]
    glob, best = choose_sides(groups).glob, choose(groups, "accuracy")
    target = pct(summary["target_acc"])

    def stat(metric: m.Metric) -> m.Stat:
        return m.over_seeds(runs, metric)

    numbers: dict[str, float | int | None] = {
        "personal_acc_mean": stat(m.acc_mean).mean,
        "personal_acc_worst10": stat(m.acc_worst10).mean,
        "bytes_per_round": stat(m.bytes_per_round).mean,
        "bytes_to_target": stat(m.bytes_to_target).mean,
        "rounds_to_target": stat(m.rounds_to_target).mean,
        "storage_bytes_per_client": stat(m.storage).mean,
        "target_acc": summary["target_acc"],
        "seeds": len(m.seeds(summary)),
    }
    reached = numbers["rounds_to_target"] is not None
    facts: dict[str, str] = {
        "accuracy": (f"per-client accuracy {accuracy(summary, name, 'personal_acc_mean', stat(m.acc_mean))} "
                     "(sample-weighted mean)"),
        "worst10": f"worst 10% of clients: {accuracy(summary, name, 'personal_acc_worst10', stat(m.acc_worst10))}",
        "bytes_per_round": f"{size(numbers['bytes_per_round'])} on the wire per round (all clients, up + down)",
        "storage": f"{size(numbers['storage_bytes_per_client'])} of state kept on each client between rounds",
        "rounds_to_target": (f"reaches the {target} target in {numbers['rounds_to_target']:.0f} rounds" if reached
                             else f"does not reach the {target} target"),
        "bytes_to_target": (f"{size(numbers['bytes_to_target'])} in total to reach the target" if reached
                            else "no bytes-to-target: target not reached"),
    }
    watch: list[str] = []
    for key, other, label in (("gain_vs_global", glob, f"the best global algorithm ({glob})"),
                              ("gain_vs_best", best, f"the most accurate candidate ({best})"),
                              ("gain_vs_local", "local", "local-only training"),
                              ("ceiling_gap", "centralized", "pooled data (centralized, the ceiling)")):
        d = None if other in (None, name) or other not in groups else m.paired(
            runs, groups[other], lambda a, b: m.acc_mean(a) - m.acc_mean(b))
        numbers[key] = None if d is None else d.mean
        if d is not None:
            facts[key] = f"{with_spread(d, signed_pp)} per-client accuracy vs {label}"
            if d.within_noise:
                watch.append(f"the difference to {other} is within noise ({d.n} seeds)")
    if numbers["gain_vs_best"] is not None and numbers["gain_vs_best"] < 0:
        watch.append(f"{-100 * numbers['gain_vs_best']:.1f} pp less per-client accuracy than {best}, "
                     f"the price of the {priority} priority")
    if glob is not None and name != glob:
        worse, total = _clients_worse(runs, groups[glob])
        numbers["clients_worse_than_global"] = worse
        facts["clients_worse"] = f"{worse} of {total} clients do worse than with {glob}'s global model"
        if worse:
            watch.append(f"{worse} of {total} clients lose accuracy compared with {glob}'s global model")
    if numbers["seeds"] == 1:
        watch.append(f"noise unknown: 1 seed; {study.more_seeds(summary)}")
    if name == "local" and best == "local":
        watch.append("no federated algorithm beats training each client alone here: federation does not pay off")
    if not reached:
        watch.append(f"{name} did not reach the comparison's target ({target})")
    dp = under_dp(summary)
    if name in dp:
        eps = next(c for c in summary["study"]["privacy"]["cells"] if c["epsilon_target"] is not None)["epsilon_target"]
        numbers["personal_acc_under_dp"] = dp[name]
        facts["under_dp"] = f"per-client accuracy {pct(dp[name])} under central user-level DP (epsilon {eps:g})"
    elif dp and stat(m.bytes_up_per_round).mean == 0:
        facts["under_dp"] = "uploads nothing, so it needs no DP noise: its accuracy is the same under any budget"
    elif priority == "privacy":
        watch.append("privacy itself (leakage, DP noise) is not measured in this run; the choice uses a proxy")
    if runs[0]["family"] != "global" and runs[0]["storage_bytes_per_client"] > 0:
        watch.append("personal state lives on each client: back it up, and new clients start without it")
    return numbers, facts, watch


def _headline(persona: str, run: Run, numbers: dict[str, Any], glob: str | None) -> str:
    name, words = run["algorithm"], KIND_WORDS[persona][_kind(run)]
    gain = numbers.get("gain_vs_global")
    gain_text = "" if gain is None else f", {100 * gain:+.1f} pp per client vs {glob}"
    per_round = size(numbers["bytes_per_round"])
    if persona == "cto":
        return f"Use {words}: {name}{gain_text}, {per_round} per round."
    if persona == "architect":
        return (f"Deploy {name}, {words}; {size(numbers['storage_bytes_per_client'])} per client, "
                f"{per_round} per round{gain_text}.")
    return (f"{name} ({words}): {pct(numbers['personal_acc_mean'])} mean, "
            f"{pct(numbers['personal_acc_worst10'])} worst-10%{gain_text}.")


def as_text(rec: Recommendation) -> str:
    """Plain text for terminals and report.md."""
    lines = [rec.headline, hyperparameters_line(rec), "", f"Rule ({rec.priority}): {rec.rule}.", "",
             "The numbers it rests on:"]
    lines += [f"- {sentence}" for _, sentence in rec.facts]
    if rec.watch:
        lines += ["", "What to watch:"] + [f"- {w}" for w in rec.watch]
    return "\n".join(lines)


def hyperparameters_line(rec: Recommendation) -> str:
    """What the recommendation rests on: the tuning label and the chosen algorithm's values."""
    t = rec.tuning
    values = tu.values_text(t["values"])
    if t["search"] is not None:
        s = t["search"]
        best = s.get("best_val")
        val = "" if best is None else f", validation {pct(best)}"
        return f"Hyperparameters: {t['label']}; {rec.algorithm}: {values} (best of {s['trials']} trials{val})."
    return f"Hyperparameters: {t['label']}; {rec.algorithm}: {values}."
