"""Learning-rate schedules whose length may change while they run, and the time plan that
changes it.

The one-cycle and cosine schedules shape the learning rate over a planned number of steps. A fit
with a time budget does not know that number in advance: it plans the epochs that fit from the
time its epochs take on this machine, now, and plans again after every epoch (the machine's
load changes, the first epoch pays for set-up, a parallel lane may hand over its CPU threads).
So the schedule reads its total from a plan that the trainer moves, and it always ends annealed
at the end of the last epoch that fits, instead of being cut off at a high learning rate by a
time limit.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PlannedSchedule", "cosine_factor", "epochs_that_fit", "one_cycle"]

# PyTorch's OneCycleLR defaults, which the one-cycle recipe was measured with (bench/recipes.py):
# start at peak / 25, end at that / 1e4; momentum (Adam's beta1) falls from 0.95 to 0.85 while
# the rate rises and climbs back while it falls.
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
MAX_MOMENTUM = 0.95
BASE_MOMENTUM = 0.85


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def one_cycle(step: int, total: int, peak: float, warmup: float) -> tuple[float, float]:
    """The learning rate and momentum at ``step`` of a one-cycle schedule of ``total`` steps that
    rises from ``peak / 25`` to ``peak`` over the first ``warmup`` share of the steps and anneals
    to ``peak / 25 / 1e4`` at the last one (both by half cosines); the same numbers as PyTorch's
    ``OneCycleLR(max_lr=peak, total_steps=total, pct_start=warmup)``."""
    initial = peak / DIV_FACTOR
    lowest = initial / FINAL_DIV_FACTOR
    turn = float(warmup * total) - 1
    last = total - 1
    if step <= turn:
        pct = step / turn if turn > 0 else 1.0
        return _cos(initial, peak, pct), _cos(MAX_MOMENTUM, BASE_MOMENTUM, pct)
    pct = min((step - turn) / (last - turn), 1.0) if last > turn else 1.0
    return _cos(peak, lowest, pct), _cos(BASE_MOMENTUM, MAX_MOMENTUM, pct)


def cosine_factor(step: int, total: int, warmup: float) -> float:
    """The learning-rate factor at ``step`` of ``total``: a linear warm-up over ``warmup`` of the
    steps, then a half cosine from 1 to 0 at the last step."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    done = (step - warm) / max(total - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


class PlannedSchedule(torch.optim.lr_scheduler.LRScheduler):
    """A one-cycle or warm-up-and-cosine schedule stepped once per optimiser step, over
    ``total_steps`` that :meth:`replan` may change while it runs (never below the steps taken).

    One-cycle also moves the momentum (beta1 for Adam and AdamW) as PyTorch's OneCycleLR does.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup: float
    ) -> None:
        if kind not in ("onecycle", "cosine"):
            raise ValueError(f"unknown planned schedule {kind!r}; known: onecycle, cosine")
        self.kind, self.total_steps, self.warmup = kind, max(int(total_steps), 1), warmup
        self._beta1 = "betas" in optimizer.defaults
        self._peaks = [g["lr"] for g in optimizer.param_groups]
        if kind == "onecycle":
            for g in optimizer.param_groups:
                self._set_momentum(g, MAX_MOMENTUM)
        super().__init__(optimizer)

    def _set_momentum(self, group: dict, value: float) -> None:
        if self._beta1:
            group["betas"] = (value, *group["betas"][1:])
        elif "momentum" in group:
            group["momentum"] = value

    def replan(self, total_steps: int) -> None:
        """Plans for ``total_steps`` from now on; the steps taken stay taken."""
        self.total_steps = max(int(total_steps), self.last_epoch + 1, 1)

    def get_lr(self) -> list[float]:
        step, total = self.last_epoch, self.total_steps
        if self.kind == "cosine":
            return [p * cosine_factor(step, total, self.warmup) for p in self._peaks]
        out = []
        for peak, group in zip(self._peaks, self.optimizer.param_groups, strict=True):
            lr, momentum = one_cycle(step, total, peak, max(self.warmup, 0.01))
            self._set_momentum(group, momentum)
            out.append(lr)
        return out


def epochs_that_fit(
    done: int, elapsed: float, budget: float, epoch_seconds: float, most: int
) -> int:
    """How many epochs in all a fit with ``budget`` seconds should train, after ``done`` epochs
    in ``elapsed`` seconds, when an epoch now takes ``epoch_seconds``: those done plus the whole
    epochs that fit the time left, at most ``most`` (never fewer than those done)."""
    left = budget - elapsed
    more = int(left // epoch_seconds) if epoch_seconds > 0 and left > 0 else 0
    return max(done, min(done + more, most))
