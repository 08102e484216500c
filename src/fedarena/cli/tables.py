"""What the commands print: a comparison, a deletion and a benchmark as rich tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _table(summary: dict[str, Any]) -> Table:
    ds = summary["dataset"]
    table = Table(title=f"{ds['name']} · {ds['partition']} · {ds['num_clients']} clients · "
                        f"target {100 * summary['target_acc']:.1f}%")
    for col in ("algorithm", "family", "global acc %", "personal mean %", "std %", "worst-10% %",
                "MB up+down", "rounds to target", "wall s"):
        table.add_column(col, justify="left" if col in ("algorithm", "family") else "right")
    for run in summary["runs"]:
        f = run["final"]
        mb = (run["bytes"]["up_total"] + run["bytes"]["down_total"]) / 1e6
        family = run["family"] + ("" if run["federated"] else " (not federated)")
        label = run["algorithm"] + (f" (seed {run['seed']})" if len(summary.get("seeds", [])) > 1 else "")
        table.add_row(label, family, _pct(f["global_acc"]), _pct(f["personal_acc_mean"]),
                      _pct(f["personal_acc_std"]), _pct(f["personal_acc_worst10"]), f"{mb:.2f}",
                      str(run["rounds_to_target"] or "-"), f"{run['wall_seconds']:.1f}")
    return table


def _forget_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"forgetting {', '.join(result['forgotten'])}: before -> after (retrain)")
    for col in ("algorithm", "method", "MIA AUC", "backdoor %", "remaining acc %", "rounds", "MB", "s"):
        table.add_column(col, justify="left" if col in ("algorithm", "method") else "right")
    for r in result["runs"]:
        if r["refused"]:
            table.add_row(r["algorithm"], r["method"], f"refused: {r['refused']}", "", "", "", "", "")
            continue
        def trio(k: str, pct: bool = False) -> str:
            f = _pct if pct else (lambda v: "-" if v is None else f"{v:.3f}")
            return f"{f(r[k + '_before'])} -> {f(r[k + '_after'])} ({f(r[k + '_retrain'])})"
        table.add_row(r["algorithm"], r["method"], trio("mia_auc"), trio("backdoor", True),
                      f"{_pct(r['remaining_acc_after'])} ({_pct(r['remaining_acc_retrain'])})",
                      f"{r['rounds']} ({r['retrain_rounds']})",
                      f"{r['bytes'] / 1e6:.2f} ({(r['retrain_bytes'] or 0) / 1e6:.2f})",
                      f"{r['seconds']:.1f} ({r['retrain_seconds'] or 0:.1f})")
    return table


def _bench_title(result: dict[str, Any]) -> str:
    """Rounds (one number, or each workload's when they differ), repeats, threads, device and matmul peak."""
    m = result["machine"]
    rounds = {w["name"]: w["rounds"] for w in result["workloads"]}
    counts = set(rounds.values())
    said = f"{counts.pop()} rounds" if len(counts) == 1 else "rounds " + ", ".join(f"{k} {v}" for k, v in rounds.items())
    repeat = result.get("repeat", 1)
    repeats = f" · median of {repeat} repeats" if repeat > 1 else ""
    device = m.get("device_name") or m.get("device", "cpu")
    return (f"{said}{repeats} · {m['torch_threads']} torch threads · {device} · "
            f"matmul peak {m['matmul_peak_gflops']:.1f} GFLOP/s")


def _bench_table(result: dict[str, Any]) -> Table:
    table = Table(title=_bench_title(result))
    for col in ("workload", "engine", "first round s", "ms/round median", "p90", "peak RSS MB", "GFLOP/s",
                "% of peak", "final acc %", "speed-up"):
        table.add_column(col, justify="left" if col in ("workload", "engine") else "right")
    notes: set[str] = set()
    for w in result["workloads"]:
        for name, e in w["engines"].items():
            if not e.get("available"):
                table.add_row(w["name"], name, "-", "-", "-", "-", "-", "-", "-", "unavailable")
                notes.add(f"{name}: {e['reason']}")
                continue
            speed = ""
            if name == "vectorized":
                ratios = w["speedup"]
                speed = " ".join(f"{v:.1f}x {k.split('_vs_')[1]}" for k, v in ratios.items() if v)
            table.add_row(w["name"], name, f"{e['first_round_s']:.2f}", f"{e['ms_per_round_median']:.0f}",
                          f"{e['ms_per_round_p90']:.0f}", f"{e['peak_rss_mb']:.0f}", f"{e['gflops']:.1f}",
                          f"{100 * e['peak_fraction']:.1f}", f"{100 * e['final_acc']:.1f}", speed)
    if notes:
        table.caption = "; ".join(sorted(notes))
    return table


def _scale_table(result: dict[str, Any]) -> Table:
    """`fedarena bench --scale`: one row per (algorithm, clients, clients per round), memory beside the timings."""
    s, m = result["scale"], result["machine"]
    repeats = f" · median of {s['repeat']} repeats" if s["repeat"] > 1 else ""
    device = m.get("device_name") or m.get("device", "cpu")
    table = Table(title=f"scale · {s['engine']} · {s['rounds']} rounds{repeats} · {m['torch_threads']} torch threads · "
                        f"{device} · target peak RSS {s['target_peak_rss_mb']} MB")
    for col in ("algorithm", "clients", "per round", "first round s", "ms/round median", "ms/client", "peak RSS MB",
                "before eval MB", "after prepare MB", "data MB", "import MB", "final acc %"):
        table.add_column(col, justify="left" if col == "algorithm" else "right")
    notes: set[str] = set()

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for r in s["runs"]:
        head = (r["algorithm"], f"{r['num_clients']:,}", f"{r['clients_per_round']:,}")
        if not r.get("available"):
            table.add_row(*head, *["-"] * 8, "unavailable")
            notes.add(f"{r['algorithm']} {r['num_clients']}x{r['clients_per_round']}: {r['reason']}")
            continue
        table.add_row(*head, f"{r['first_round_s']:.2f}", f"{r['ms_per_round_median']:.0f}",
                      f"{r['ms_per_sampled_client']:.2f}", mb(r["peak_rss_mb"]), mb(r["peak_rss_before_eval_mb"]),
                      mb(r["rss_after_prepare_mb"]), mb(r["data_mb"]), mb(r["import_rss_mb"]),
                      f"{100 * r['final_acc']:.1f}")
    said = [f"import baseline (own child) {mb(s['baseline_rss_mb'])} MB", "ms/client: ms/round median / clients per round",
            "after prepare: RSS once the data is prepared", "peak RSS includes the final evaluation", *sorted(notes)]
    table.caption = "; ".join(said)
    return table
