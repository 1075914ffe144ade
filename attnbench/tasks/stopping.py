"""When a task model has finished training: the plateau rule, the same for both frameworks.

Training runs at most ``steps`` steps (the budget) and, with ``plateau_steps`` > 0, stops
earlier once the training loss has plateaued. The rule is checked at every point of the kept
loss curve (the mean loss of each ``log_every`` steps); at step ``s`` the loss has plateaued
when

1. at least ``2 * plateau_steps`` steps have run,
2. the best (lowest) point of the last ``plateau_steps`` steps is not ``plateau_delta`` nats
   lower than the best point before them: no real progress in that span, and
3. the latest point is below ``plateau_below`` times the first: the model has learned
   something. The duplication task sits near ln(vocab) nats for hundreds of steps before the
   copy is learned; without this, that early plateau would stop training before learning.

A run that stops by the rule ``converged``; one that used its whole budget did not, and its
cells are marked so. The decision is a function of the curve alone, so a checkpoint's
stored curve says how its training ended.
"""

from __future__ import annotations

from collections.abc import Sequence


def plateaued(curve: Sequence[Sequence[float]], *, plateau_steps: int, plateau_delta: float,
              plateau_below: float) -> bool:
    """Whether the loss curve ``[[step, mean loss], ...]`` (steps increasing) has plateaued
    at its last point, by the rule above; always False when ``plateau_steps`` is 0."""
    if plateau_steps <= 0 or len(curve) < 2:
        return False
    step = curve[-1][0]
    if step < 2 * plateau_steps:
        return False
    recent = [loss for s, loss in curve if s > step - plateau_steps]
    earlier = [loss for s, loss in curve if s <= step - plateau_steps]
    if not earlier:
        return False
    return (min(recent) > min(earlier) - plateau_delta
            and curve[-1][1] < plateau_below * curve[0][1])


def stop_reason(curve: Sequence[Sequence[float]], config) -> str:
    """How a finished training run ended: ``plateau`` (stopped by the rule), ``budget`` (ran
    all ``config.steps`` without plateauing) or ``fixed`` (no rule: ``plateau_steps`` 0)."""
    if config.plateau_steps <= 0:
        return "fixed"
    return "plateau" if plateaued(curve, **rule(config)) else "budget"


def rule(config) -> dict:
    return {"plateau_steps": config.plateau_steps, "plateau_delta": config.plateau_delta,
            "plateau_below": config.plateau_below}
