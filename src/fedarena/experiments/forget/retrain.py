"""Exact deletion by retraining without the client: the gold standard every cheaper method is measured
against.

Resumes from the last checkpoint before the forgotten clients first took part (every state up to then is
untouched by them), then trains the remaining rounds with them excluded. Client participation is drawn per
(seed, round, client) (DESIGN.md), so the result is bit-identical to a fresh run that never had them — a
test checks this. Without a usable checkpoint (forget.keep=none, or a stateful algorithm without client
snapshots) it retrains from round 0, which gives the same bits at a higher cost.
"""

from __future__ import annotations

import dataclasses

from fedarena.experiments.compare import train_algorithm
from fedarena.experiments.forget.source import Outcome, Source
from fedarena.forget.store import Recorder
from fedarena.sim.engine import Checkpoint


def retrain(src: Source, name: str, record: Recorder | None = None) -> Outcome:
    """Retrain `name` without the forgotten clients, on the in-process engine `src.engine` (forget.json names it)."""
    t = src.config.train
    first = src.first_round(name)
    if first is None:  # never took part: nothing to undo
        return src.original(name)
    if (unchanged := src.nothing_shared(name)) is not None:
        return unchanged
    start = src.resume_round(name, first - 1)
    checkpoint = None if start == 0 else Checkpoint(start, src.stored(name).server(start), src.states_at(name, start))
    # one evaluation (the last round's): retraining is measured by its models, not by its learning curve
    config = dataclasses.replace(src.config, train=dataclasses.replace(t, eval_every=t.rounds))
    # retrained as trained (DP, DP-SGD where the run used them), through the comparison's own training step
    _, run = train_algorithm(config, src.prepared, name, checkpoint=checkpoint, exclude=tuple(src.forgotten),
                             record=record)
    return Outcome(
        server=run.server, states=run.states, rounds=t.rounds - start,
        bytes=sum(run.ledger.up.values()) + sum(run.ledger.down.values()), seconds=run.wall_seconds,
        note=f"retrained rounds {start + 1}..{t.rounds} on the {src.engine} engine without the client(s) from the "
             f"round-{start} checkpoint",
    )
