"""The common pFL-vs-global claims beside the numbers measured in one run directory, with verdicts.

Each row compares **best pFL** with **best global**: the personalized algorithm and the global
algorithm with the highest mean `personal_acc_mean` over seeds (the primary metric). The pFL side is
family `personalized` plus FedAvg-FT (a federated model personalized by fine-tuning); `local` and
`centralized` are reference points only. Every row also lists each algorithm's own value.

Verdict rules (docs/report.md lists every row's q and range). A row tests a measured quantity q, signed
so that q > 0 is the direction the claim states, against the size the claim states, [low, high]:

- **not measured**: the run holds no measurement for the row (or no algorithm on one side);
- **within noise**: with >= 2 seeds, the 95% confidence interval of q's mean over seeds contains 0
  (see :mod:`fedarena.report.measures`);
- **does not hold**: q <= 0 (the opposite direction, or no difference at all);
- **holds**: low <= q <= high;
- **partly**: the direction holds but the size does not (q > 0 outside [low, high]).

With one seed the verdict is taken on the point value and the row says that the noise is unknown.
Every verdict rests on the run's hyperparameters: the table carries summary.json's tuning label
(`ClaimTable.hyperparameters`: "tuned (N trials, ...)" or "untuned defaults"; see :mod:`fedarena.report.tuning`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from fedarena.report import measures as m
from fedarena.report import study, tuning
from fedarena.report.format import pct, signed_pp, signed_rel, size, with_spread
from fedarena.report.measures import Run, Stat
from fedarena.report.verdicts import (  # noqa: F401  (re-exported: the report's modules read them here)
    Row,
    Sides,
    Verdict,
    onboarding_verdict,
    range_verdict,
    storage_verdict,
    target_verdict,
)

PERSONALIZED_BASELINES = ("fedavg-ft",)  # baselines that federate and then personalize: pFL side


@dataclass(frozen=True)
class ClaimTable:
    sides: Sides
    rows: tuple[Row, ...]
    num_seeds: int
    groups: dict[str, list[Run]] = field(repr=False)
    # what every verdict rests on: summary.json's tuning label ("tuned (N trials, ...)", "untuned defaults", ...)
    hyperparameters: str = tuning.UNTUNED_DEFAULTS


# ------------------------------------------------------------------ sides


def choose_sides(groups: dict[str, list[Run]]) -> Sides:
    """Best pFL and best global by mean final personal_acc_mean (ties: the first listed)."""
    def family(name: str) -> str:
        return groups[name][0]["family"]

    pfl = tuple(a for a in groups if family(a) == "personalized" or a in PERSONALIZED_BASELINES)
    glob = tuple(a for a in groups if family(a) == "global")

    def best(names: tuple[str, ...]) -> str | None:
        scored = [(m.over_seeds(groups[a], m.acc_mean).mean, -i, a) for i, a in enumerate(names)]
        return max(scored)[2] if scored else None

    return Sides(best(pfl), best(glob), pfl, glob)


# ------------------------------------------------------------------ rows

# key -> (topic, the claim's "Personalized FL" cell, its "Global model FL" cell, the statement tested)
CLAIMS: dict[str, tuple[str, str, str, str]] = {
    "accuracy_mean": (
        "Per-client accuracy (mean)",
        "individual client performance; \u201c>15% higher accuracy per client\u201d on non-IID data",
        "average global performance",
        "best pFL's sample-weighted per-client accuracy is at least 15 percentage points above best global's"),
    "accuracy_worst10": (
        "Per-client accuracy (worst 10% of clients)", "individual client performance", "average global performance",
        "best pFL's worst-10% client accuracy is above best global's"),
    "global_objective": (
        "Global accuracy (one model on all clients' test data)", "-", "average global performance",
        "best global's model is more accurate on the union of all test splits than best pFL's global model"),
    "data_similarity": (
        "Ideal data similarity", "low (non-IID)", "high (IID)",
        "the pFL-minus-global gain grows with heterogeneity and vanishes near IID (needs several levels)"),
    "storage": (
        "Client-specific model storage", "required", "none",
        "best pFL keeps state on each client between rounds (storage_bytes_per_client > 0); best global keeps none"),
    "comm_per_round": (
        "Communication cost per round", "~10-50% higher", "baseline",
        "best pFL's bytes per round (up + down, all clients) are 10% to 50% above best global's"),
    "bandwidth_to_target": (
        "Total bandwidth to target", "-", "\u201c30-50% less bandwidth\u201d",
        "best global needs 30% to 50% fewer bytes (up + down, cumulative) than best pFL to reach the target"),
    "convergence_rounds": (
        "Convergence time (rounds to target)", "20-40% slower", "baseline",
        "best pFL needs 20% to 40% more rounds than best global to reach the target"),
    "convergence_seconds": (
        "Convergence time (training seconds to target)", "20-40% slower", "baseline",
        "best pFL needs 20% to 40% more training time than best global to reach the target (on this machine)"),
    "onboarding": (
        "Post-deployment personalization", "continuous, on-device", "requires re-federation",
        "on-device adaptation raises best pFL's accuracy on new clients, above the global model they download"),
    "forgetting": (
        "Right to be forgotten (GDPR)", "easier: delete the local model", "harder: scrub from the global model",
        "removing a client from pFL costs less (bytes, rounds, residual influence) than from the global model"),
    "privacy": (
        "Privacy cost", "-", "-",
        "the same privacy protection (central user-level DP at one budget) costs best pFL less per-client accuracy "
        "than best global (each side's loss against no DP, paired by seed)"),
    "robustness": (
        "Robustness to poisoning", "robust: personalization limits what poisoned updates do to each client "
        "(Ditto, Li et al., ICML 2021)", "one poisoned model for every client unless the server aggregates robustly",
        "under the run's attack, best pFL's per-client accuracy on the benign clients is above best global's (in a "
        "default study: the attack costs best pFL less accuracy on the same benign clients than best global)"),
}


def _row(key: str, measured: str, verdict: Verdict, note: str = "",
         details: tuple[tuple[str, str], ...] = ()) -> Row:
    return Row(key, *CLAIMS[key], measured, verdict, note, details)


@dataclass(frozen=True)
class _Ctx:
    summary: dict[str, Any]
    groups: dict[str, list[Run]]
    sides: Sides

    @property
    def p(self) -> list[Run]:
        return self.groups[self.sides.pfl]

    @property
    def g(self) -> list[Run]:
        return self.groups[self.sides.glob]

    def means(self, metric: m.Metric) -> tuple[float | None, float | None]:
        """(best pFL's, best global's) mean of `metric` over seeds."""
        return m.over_seeds(self.p, metric).mean, m.over_seeds(self.g, metric).mean

    def details(self, metric: m.Metric, fmt: Callable[[float], str]) -> tuple[tuple[str, str], ...]:
        return tuple((a, with_spread(m.over_seeds(rs, metric), fmt)) for a, rs in self.groups.items())


def _noise_note(c: _Ctx, q: Stat, noisy: bool) -> str:
    if noisy and q.n == 1:
        return f"noise unknown: 1 seed; {study.more_seeds(c.summary)}"
    return ""


def _diff(metric: m.Metric) -> Callable[[Run, Run], float | None]:
    def q(a: Run, b: Run) -> float | None:
        x, y = metric(a), metric(b)
        return None if x is None or y is None else x - y
    return q


def _ratio(metric: m.Metric, minus_one: bool = True) -> Callable[[Run, Run], float | None]:
    """metric(a) / metric(b) - 1, or 1 - metric(a) / metric(b) with minus_one False."""
    def q(a: Run, b: Run) -> float | None:
        x, y = metric(a), metric(b)
        if x is None or y is None or y == 0:
            return None
        return x / y - 1 if minus_one else 1 - x / y
    return q


def _accuracy_row(c: _Ctx, key: str, metric: m.Metric, low: float) -> Row:
    q = m.paired(c.p, c.g, _diff(metric))
    pm, gm = c.means(metric)
    return _row(key, f"{c.sides.pfl} {pct(pm)} vs {c.sides.glob} {pct(gm)}: {with_spread(q, signed_pp)}",
                range_verdict(q, low), _noise_note(c, q, True), c.details(metric, pct))


def _row_accuracy_mean(c: _Ctx) -> Row:
    return _accuracy_row(c, "accuracy_mean", m.acc_mean, 0.15)


def _row_accuracy_worst10(c: _Ctx) -> Row:
    return _accuracy_row(c, "accuracy_worst10", m.acc_worst10, 0.0)


def _row_global_objective(c: _Ctx) -> Row:
    details = c.details(m.global_acc, pct)
    pm, gm = c.means(m.global_acc)
    if pm is None:
        return _row("global_objective", f"{c.sides.glob} {pct(gm)}; {c.sides.pfl} keeps no full global model",
                    Verdict.HOLDS, "by construction: only the global side has one model for everyone", details)
    q = m.paired(c.g, c.p, _diff(m.global_acc))
    return _row("global_objective", f"{c.sides.glob} {pct(gm)} vs {c.sides.pfl} {pct(pm)}: {with_spread(q, signed_pp)}",
                range_verdict(q, 0.0), _noise_note(c, q, True), details)


def _row_similarity(c: _Ctx) -> Row:
    if c.summary.get("study"):
        return _row("data_similarity", *study.similarity(c.summary["study"]["sweep"]))
    het = c.summary["dataset"]["heterogeneity"]
    ahead = "pFL" if (m.paired(c.p, c.g, _diff(m.acc_mean)).mean or 0) > 0 else "global"
    return _row("data_similarity",
                f"one level here (JS divergence {het['js_divergence_mean']:.2f}, {het['effective_classes_mean']:.1f} "
                f"effective classes per client), where {ahead} is ahead; `fedarena sweep` measures the crossover",
                Verdict.NOT_MEASURED, "measured by fedarena sweep, not by a single comparison")


def _row_storage(c: _Ctx) -> Row:
    ps, gs = (int(x) for x in c.means(m.storage))
    return _row("storage", f"{c.sides.pfl} {size(ps)} per client vs {c.sides.glob} {size(gs)}",
                storage_verdict(ps, gs), "", c.details(m.storage, size))


def _row_comm_per_round(c: _Ctx) -> Row:
    q = m.paired(c.p, c.g, _ratio(m.bytes_per_round))
    pb, gb = c.means(m.bytes_per_round)
    return _row("comm_per_round",
                f"{c.sides.pfl} {size(pb)} vs {c.sides.glob} {size(gb)} per round: {with_spread(q, signed_rel)}",
                range_verdict(q, 0.10, 0.50), "", c.details(m.bytes_per_round, size))


def _target_row(c: _Ctx, key: str, metric: m.Metric, q: Stat, low: float, high: float,
                fmt: Callable[[float], str], qlabel: str, noisy: bool) -> Row:
    target = pct(c.summary["target_acc"])
    p_reached = any(metric(r) is not None for r in c.p)
    g_reached = any(metric(r) is not None for r in c.g)
    pm, gm = c.means(metric)
    if q.n:
        measured = f"{c.sides.pfl} {fmt(pm)} vs {c.sides.glob} {fmt(gm)} to reach {target}; {qlabel} {with_spread(q, signed_rel)}"
    elif p_reached or g_reached:
        never, did, value = (c.sides.glob, c.sides.pfl, pm) if p_reached else (c.sides.pfl, c.sides.glob, gm)
        measured = f"{never} never reached the target ({target}) in {c.p[0]['rounds']} rounds; {did} did ({fmt(value)})"
    else:
        measured = f"neither {c.sides.pfl} nor {c.sides.glob} reached the target ({target})"
    dropped = max(len(c.p), len(c.g)) - q.n
    note = f"{dropped} seed(s) where a side never reached the target left out" if q.n and dropped else _noise_note(c, q, noisy)
    return _row(key, measured, target_verdict(q, p_reached, g_reached, low, high), note, c.details(metric, fmt))


def _row_bandwidth(c: _Ctx) -> Row:
    q = m.paired(c.g, c.p, _ratio(m.bytes_to_target, minus_one=False))
    return _target_row(c, "bandwidth_to_target", m.bytes_to_target, q, 0.30, 0.50, size, "global's saving", False)


def _row_rounds(c: _Ctx) -> Row:
    q = m.paired(c.p, c.g, _ratio(m.rounds_to_target))
    return _target_row(c, "convergence_rounds", m.rounds_to_target, q, 0.20, 0.40,
                       lambda x: f"{x:.0f} rounds", "pFL's extra", True)


def _row_seconds(c: _Ctx) -> Row:
    q = m.paired(c.p, c.g, _ratio(m.seconds_to_target))
    return _target_row(c, "convergence_seconds", m.seconds_to_target, q, 0.20, 0.40,
                       lambda x: f"{x:.1f} s", "pFL's extra", True)


def _row_onboarding(c: _Ctx) -> Row:
    if None in c.means(m.new_after):
        return _row("onboarding", "not measured: no new clients in this run (compare --new-clients 0.2 measures it)",
                    Verdict.NOT_MEASURED)
    adaptation = m.paired(c.p, c.p, lambda a, _: m.new_after(a) - m.new_before(a))
    vs_global = m.paired(c.p, c.g, _diff(m.new_after))
    (pb, _), (pa, ga) = c.means(m.new_before), c.means(m.new_after)
    steps = c.p[0]["new_clients"]["adaptation_steps"]
    measured = (f"new clients on {c.sides.pfl}: {pct(pb)} on arrival, {pct(pa)} after {steps} local steps "
                f"({with_spread(adaptation, signed_pp)}); on {c.sides.glob}'s global model: {pct(ga)} "
                f"(pFL {with_spread(vs_global, signed_pp)})")
    details = tuple((a, f"{pct(m.over_seeds(rs, m.new_before).mean)} \u2192 {pct(m.over_seeds(rs, m.new_after).mean)}")
                    for a, rs in c.groups.items() if m.over_seeds(rs, m.new_after).n)
    return _row("onboarding", measured, onboarding_verdict(adaptation, vs_global), _noise_note(c, adaptation, True), details)


# residual influence counted as "none" when within these of the exact retrain's (documented in docs/report.md)
FORGET_BACKDOOR_TOL, FORGET_MIA_TOL = 0.05, 0.02


def _forget_rows(summary: dict[str, Any], algorithm: str | None) -> dict[str, dict[str, Any]]:
    return {r["method"]: r for f in summary.get("forget") or [] for r in f["runs"]
            if r["algorithm"] == algorithm and not r["refused"]}


def _residual(r: dict[str, Any], when: str) -> bool:
    """Whether the forgotten client's influence `when` (before | after) is beyond the retrain's."""
    mia = abs(r[f"mia_auc_{when}"] - r["mia_auc_retrain"]) > FORGET_MIA_TOL
    b, b_ret = r[f"backdoor_{when}"], r["backdoor_retrain"]
    return mia or (b is not None and b_ret is not None and b - b_ret > FORGET_BACKDOOR_TOL)


def _describe_forget(name: str, rows: dict[str, dict[str, Any]]) -> str:
    r = rows["retrain"]
    text = (f"{name}: dropping the client's own state leaves backdoor {pct(r['backdoor_before'])} / MIA AUC "
            f"{r['mia_auc_before']:.2f} (exact retrain: {pct(r['backdoor_retrain'])} / {r['mia_auc_retrain']:.2f}); "
            f"exact removal costs {r['retrain_rounds']} rounds, {r['retrain_bytes'] / 1e6:.1f} MB")
    if "federaser" in rows:
        f = rows["federaser"]
        text += (f"; FedEraser {f['rounds']} rounds, {f['bytes'] / 1e6:.1f} MB, backdoor {pct(f['backdoor_after'])}, "
                 f"remaining acc {pct(f['remaining_acc_after'])} vs {pct(f['remaining_acc_retrain'])}")
    return text


def _row_forgetting(c: _Ctx) -> Row:
    pfl, glob = _forget_rows(c.summary, c.sides.pfl), _forget_rows(c.summary, c.sides.glob)
    if "retrain" not in pfl or "retrain" not in glob:
        return _row("forgetting", "not measured: run fedarena compare --forget-probe ID (deletes client ID and "
                    "measures what is left)", Verdict.NOT_MEASURED)
    measured = f"{_describe_forget(c.sides.pfl, pfl)}. {_describe_forget(c.sides.glob, glob)}"
    pfl_left, glob_left = _residual(pfl["retrain"], "before"), _residual(glob["retrain"], "before")
    took = any((r["retrain"]["backdoor_before"] or 0) >= FORGET_BACKDOOR_TOL for r in (pfl, glob))
    caveat = ("; one seed and one client: no noise estimate" + ("" if took else
              "; the planted backdoor did not take (success below 5% on both sides before deletion), so only the "
              "membership-inference gap decides"))
    if pfl_left:
        return _row("forgetting", measured, Verdict.FAILS,
                    "deleting the personal model is not enough: the shared part still carries the client" + caveat)
    if glob_left:
        return _row("forgetting", measured, Verdict.HOLDS,
                    "the personal model held the client; the global model had to be retrained or unlearned" + caveat)
    return _row("forgetting", measured, Verdict.PARTLY,
                "neither model kept a measurable trace of the client at this scale, so neither deletion was hard" + caveat)


def _row_privacy(c: _Ctx) -> Row:
    """The default study's privacy sweep, or what this run measured under its privacy settings (the cost against no
    privacy needs the epsilon sweep)."""
    if c.summary.get("study"):
        return _row("privacy", *study.privacy(c.summary["study"]["privacy"]))
    parts = []
    for name in (c.sides.pfl, c.sides.glob):
        run = c.groups[name][0]
        p = run.get("privacy")
        if p:
            eps = "n/a" if p["epsilon"] is None else f"{p['epsilon']:.2f}"
            sample = p.get("sample_level")
            what = ", ".join(x for x in (
                "SecAgg" if p["secagg"] else "", f"{p['dp_mode']} DP eps {eps} (delta {p['delta']:g})" if p["dp_mode"] else "",
                f"DP-SGD eps <= {sample['epsilon_max']:.2f} per client's samples (delta {sample['delta']:g})"
                if sample and sample.get("epsilon_max") is not None else "",
            ) if x)
            parts.append(f"{name} {pct(m.over_seeds(c.groups[name], m.acc_mean).mean)} under {what}{_membership(run)}")
    if not parts:
        return _row("privacy", "not measured: privacy was off in this run (fedarena sweep --epsilons 1,3,8,inf "
                    "measures what DP costs each family)", Verdict.NOT_MEASURED)
    return _row("privacy", "; ".join(parts), Verdict.NOT_MEASURED,
                "the cost against no privacy is measured by fedarena sweep --epsilons (privacy_sweep.md)")


def _row_robustness(c: _Ctx) -> Row:
    """Benign clients' accuracy under the run's simulated attack (summary.json's `attack`), best pFL against best
    global; a clean baseline and every attack side by side are in docs/results/robustness.md. In a default study the
    attack ran as its own comparison (study/attack) and the row compares what it cost each side (report/study.py)."""
    if c.summary.get("study"):
        return _row("robustness", *study.robustness(c.groups, c.summary["study"]["attack"], c.sides))
    a = c.summary.get("attack")
    if not a or a["kind"] == "none":
        return _row("robustness", "not measured: no attack in this run (fedarena compare --attack KIND --malicious 0.2 "
                    "measures one; docs/results/robustness.md measures each attack and aggregator)", Verdict.NOT_MEASURED)
    q = m.paired(c.p, c.g, _diff(m.acc_mean))
    pm, gm = c.means(m.acc_mean)
    hit = {name: m.over_seeds(c.groups[name], lambda r: r.get("attack_success")).mean for name in (c.sides.pfl, c.sides.glob)}
    success = "" if hit[c.sides.glob] is None else (
        f"; backdoor success {c.sides.pfl} {pct(hit[c.sides.pfl])} vs {c.sides.glob} {pct(hit[c.sides.glob])}")
    diverged = sorted({r["algorithm"] for rs in c.groups.values() for r in rs if r.get("diverged")})
    return _row("robustness", f"{a['kind']} by {a['malicious_fraction']:.0%} of the clients, {a['aggregator']['name']} "
                f"aggregation: {c.sides.pfl} {pct(pm)} vs {c.sides.glob} {pct(gm)}: {with_spread(q, signed_pp)}{success}"
                + (f"; diverged: {', '.join(diverged)}" if diverged else ""),
                range_verdict(q, 0.0), _noise_note(c, q, True), c.details(m.acc_mean, pct))


def _membership(run: dict[str, Any]) -> str:
    """The membership-inference AUC of the model each client keeps and of the global model (0.5 = no signal)."""
    mb = run.get("membership")
    if not mb or mb.get("personal_auc_mean") is None:
        return ""
    glob = "" if mb.get("global_auc_mean") is None else f", global model {mb['global_auc_mean']:.2f}"
    return f" (membership-inference AUC: personal model {mb['personal_auc_mean']:.2f}{glob})"


ROWS: tuple[Callable[[_Ctx], Row], ...] = (
    _row_accuracy_mean, _row_accuracy_worst10, _row_global_objective, _row_similarity, _row_storage,
    _row_comm_per_round, _row_bandwidth, _row_rounds, _row_seconds, _row_onboarding, _row_forgetting, _row_privacy,
    _row_robustness,
)


def _missing_side_rows(sides: Sides) -> tuple[Row, ...]:
    missing = []
    if sides.pfl is None:
        missing.append("no personalized algorithm (add e.g. fedper or ditto to --algorithms)")
    if sides.glob is None:
        missing.append("no global algorithm (add e.g. fedavg to --algorithms)")
    why = "not measured: this run has " + " and ".join(missing)
    return tuple(_row(key, why, Verdict.NOT_MEASURED) for key in CLAIMS)


def claim_table(summary: dict[str, Any]) -> ClaimTable:
    """The measured claims table of a summary.json (any number of seeds)."""
    groups = m.by_algorithm(summary)
    sides = choose_sides(groups)
    if sides.pfl is None or sides.glob is None:
        rows = _missing_side_rows(sides)
    else:
        ctx = _Ctx(summary, groups, sides)
        rows = tuple(row(ctx) for row in ROWS)
    return ClaimTable(sides, rows, len(m.seeds(summary)), groups, tuning.label(summary))
