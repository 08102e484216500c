"""Exact deletion by retraining without the client: the gold standard every cheaper method is measured
against.

Resumes from the last checkpoint before the forgotten clients first took part (every state up to then is
untouched by them), then trains the remaining rounds with them excluded. Client participation is drawn per
(seed, round, client) (DESIGN.md), so the result is bit-identical to a fresh run that never had them — a
test checks this. Without a usable checkpoint (forget.keep=none, or a stateful algorithm without client
snapshots) it retrains from round 0, which gives the same bits at a higher cost.
"""

from __future__ import annotations

from typing import Any

from fedarena.compare import privacy_for
from fedarena.forget.source import Outcome, Source
from fedarena.privacy.dpsgd import SampleLevel
from fedarena.sim.engine import Checkpoint, run_algorithm


def retrain(src: Source, name: str, record: Any = None) -> Outcome:
    algo, t = src.algo(name), src.config.train
    first = src.first_round(name)
    if first is None:  # never took part: nothing to undo
        return src.original(name)
    if (unchanged := src.nothing_shared(name)) is not None:
        return unchanged
    start = src.resume_round(name, first - 1)
    resume = None if start == 0 else Checkpoint(start, src.stored(name).server(start), src.states_at(name, start))
    run = run_algorithm(
        algo, src.task, src.data, rounds=t.rounds, clients_per_round=t.clients_per_round, eval_every=t.rounds,
        seed=src.seed, engine=src.engine, exclude=[*src.forgotten, *src.held_out], resume=resume,
        record=record, on_start=getattr(record, "start", None), privacy=privacy_for(src.config, algo, src.prepared),
        dpsgd=SampleLevel.build(src.config.privacy),  # retrained as trained: DP-SGD where the run used it
    )
    return Outcome(
        server=run.server, states=run.states, rounds=t.rounds - start,
        bytes=sum(run.ledger.up.values()) + sum(run.ledger.down.values()), seconds=run.wall_seconds,
        note=f"retrained rounds {start + 1}..{t.rounds} without the client(s) from the round-{start} checkpoint",
    )
