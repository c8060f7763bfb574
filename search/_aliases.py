"""Which Pareto-front member gets which registry alias: pure rules, no Optuna, no MLflow.

A study has two objectives, validation accuracy (maximised) and a complexity (parameters or MACs,
minimised). The registry names a few members of its Pareto front by alias: ``most-accurate``,
``smallest``, ``best-ratio``, ``knee`` and the config-chosen ``champion``. Every choice is made by
a total order (the stated tie-breakers end with the trial number), so the same front always gives
the same aliases whatever order its members arrive in, and re-registering a study never moves an
alias for no reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "CHAMPION_RULES",
    "COMPLEXITIES",
    "ChampionRule",
    "Member",
    "assign_aliases",
    "champion",
    "knee",
    "pareto_members",
    "within_limits",
]

COMPLEXITIES = ("params", "macs", "latency")
CHAMPION_RULES = ("most_accurate", "smallest_within", "knee", "best_ratio")

# Accuracies are floats: 0.905 - 0.005 need not compare >= 0.9, yet "within half a point" must
# include a member exactly half a point behind. Far below any accuracy difference that matters.
_WITHIN_TOLERANCE = 1e-9
# Normalised distances of collinear points come out as rounding noise, not 0; a member must beat
# this to count as bulging above the extremes' line.
_KNEE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Member:
    """One Pareto-front member as the alias rules see it."""

    trial: int  # trial number (unique id; also the final tie-breaker: lower wins)
    accuracy: float  # validation accuracy in [0, 1]
    params: int
    macs: float  # per image; executed MACs for adaptive-depth networks
    latency: float = 0.0  # median milliseconds for one image (objectives.measure_latency)

    def __post_init__(self) -> None:
        # A NaN accuracy compares false with everything, which would make every ordering below
        # depend on input order; negative counts cannot come from a real model.
        if not math.isfinite(self.accuracy):
            raise ValueError(f"Member {self.trial}: accuracy must be finite, got {self.accuracy!r}")
        if self.params < 0 or self.macs < 0:
            raise ValueError(
                f"Member {self.trial}: params and macs must be >= 0, got {self.params}, {self.macs}"
            )


@dataclass(frozen=True)
class ChampionRule:
    """How the 'champion' alias is chosen (from the study config)."""

    rule: str = "most_accurate"  # one of CHAMPION_RULES
    max_params: int | None = None  # for "most_accurate": only members with params <= this
    max_macs: int | None = None  # likewise for MACs
    within: float = 0.005  # for "smallest_within": accuracy within this of the most accurate


def _complexity_of(complexity: str) -> Callable[[Member], float]:
    if complexity == "params":
        return lambda m: m.params
    if complexity == "macs":
        return lambda m: m.macs
    if complexity == "latency":
        return lambda m: m.latency
    raise ValueError(f"complexity must be one of {COMPLEXITIES}, got {complexity!r}")


def _check_rule(rule: ChampionRule) -> None:
    if rule.rule not in CHAMPION_RULES:
        raise ValueError(f"champion rule must be one of {CHAMPION_RULES}, got {rule.rule!r}")
    if not (math.isfinite(rule.within) and rule.within >= 0):
        raise ValueError(f"champion 'within' must be a finite number >= 0, got {rule.within!r}")


# The orders below are total (trial last), so min() never depends on input order.


def _most_accurate_key(cx: Callable[[Member], float]) -> Callable[[Member], tuple]:
    return lambda m: (-m.accuracy, cx(m), m.trial)


def _smallest_key(cx: Callable[[Member], float]) -> Callable[[Member], tuple]:
    return lambda m: (cx(m), -m.accuracy, m.trial)


def _ratio_key(m: Member) -> tuple:
    # Fraction makes the ratio exact, so 0.5/1000 and 0.25/500 tie and fall to the tie-breakers
    # instead of to float rounding. A parameter-free model would divide by zero; count it as 1.
    return (-(Fraction(m.accuracy) / max(m.params, 1)), -m.accuracy, m.trial)


def pareto_members(members: Sequence[Member], complexity: str = "params") -> list[Member]:
    """The members no other member dominates (accuracy max, complexity min).

    Members with identical objectives do not dominate each other, so all of them stay (the alias
    rules break such ties by trial number); the very same member given twice is kept once. The
    result is sorted by complexity ascending, then accuracy descending, then trial.
    """
    cx = _complexity_of(complexity)
    ordered = sorted(set(members), key=_smallest_key(cx))
    front: list[Member] = []
    best_smaller = -math.inf  # best accuracy among members of strictly smaller complexity
    i = 0
    while i < len(ordered):
        # One complexity value at a time: within it only the most accurate survive, and only if
        # they beat everything cheaper (an equal accuracy at lower complexity dominates them).
        j = i
        while j < len(ordered) and cx(ordered[j]) == cx(ordered[i]):
            j += 1
        top = ordered[i].accuracy  # the group is sorted accuracy-descending
        if top > best_smaller:
            front.extend(m for m in ordered[i:j] if m.accuracy == top)
            best_smaller = top
        i = j
    return front


def knee(front: Sequence[Member], complexity: str = "params") -> Member:
    """The knee of the front: the member bulging furthest above the line joining its extremes.

    Accuracy and log10(complexity) are min-max normalised to [0, 1] over the front (a constant axis
    normalises to 0); the extremes are the smallest and the most accurate members. The knee is the
    member with the largest perpendicular distance to the line between them, counted on the side
    of higher accuracy / lower complexity: a member below the line is a worse trade-off than
    interpolating the extremes, so however far it lies it is no knee. Ties in distance, fronts of
    one or two members, and fronts where nothing lies above the line give the most accurate
    member (ties: smaller complexity, then lower trial).
    """
    cx = _complexity_of(complexity)
    if not front:
        raise ValueError("knee of an empty front")
    members = sorted(set(front), key=_most_accurate_key(cx))
    most_accurate = members[0]
    if len(members) <= 2:
        return most_accurate
    smallest = min(members, key=_smallest_key(cx))

    # log10: a 10x larger model is one step whatever the scale; 0 (cannot occur) is treated as 1.
    logs = {m: math.log10(max(cx(m), 1)) for m in members}

    def normaliser(values: list[float]) -> Callable[[float], float]:
        lo, hi = min(values), max(values)
        return (lambda v: (v - lo) / (hi - lo)) if hi > lo else (lambda v: 0.0)

    norm_x = normaliser(list(logs.values()))
    norm_y = normaliser([m.accuracy for m in members])

    def point(m: Member) -> tuple[float, float]:
        return norm_x(logs[m]), norm_y(m.accuracy)

    (x0, y0), (x1, y1) = point(smallest), point(most_accurate)
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy)
    if length == 0:  # the extremes coincide: no line to measure against
        return most_accurate

    def distance(m: Member) -> float:
        # Cross product / length: positive above the line (more accurate for its complexity).
        x, y = point(m)
        return (dx * (y - y0) - dy * (x - x0)) / length

    # max() keeps the first of equal distances, and members are in most-accurate order.
    best = max(members, key=distance)
    return best if distance(best) > _KNEE_TOLERANCE else most_accurate


def within_limits(m: Member, rule: ChampionRule) -> bool:
    """Whether ``m`` is within the rule's ``max_params`` and ``max_macs`` (None: no limit)."""
    return (rule.max_params is None or m.params <= rule.max_params) and (
        rule.max_macs is None or m.macs <= rule.max_macs
    )


def champion(
    front: Sequence[Member], rule: ChampionRule, complexity: str = "params"
) -> Member | None:
    """The member the study config calls champion, or None when the rule admits none.

    ``most_accurate``: the most accurate member with params <= ``max_params`` and macs <=
    ``max_macs`` (a None limit is no limit); ``smallest_within``: the least complex member whose
    accuracy is at least the best accuracy minus ``within``; ``knee``: :func:`knee`;
    ``best_ratio``: the highest accuracy / params. Ties as in :func:`assign_aliases`. The rule and
    complexity are checked even for an empty front, so a bad config fails at once.
    """
    cx = _complexity_of(complexity)
    _check_rule(rule)
    if not front:
        return None
    if rule.rule == "most_accurate":
        allowed = [m for m in front if within_limits(m, rule)]
        return min(allowed, key=_most_accurate_key(cx), default=None)
    if rule.rule == "smallest_within":
        floor = max(m.accuracy for m in front) - rule.within - _WITHIN_TOLERANCE
        return min((m for m in front if m.accuracy >= floor), key=_smallest_key(cx))
    if rule.rule == "knee":
        return knee(front, complexity)
    return min(front, key=_ratio_key)  # best_ratio


def assign_aliases(
    front: Sequence[Member], rule: ChampionRule, complexity: str = "params"
) -> dict[str, Member]:
    """Alias -> member for a Pareto front.

    ``most-accurate``: highest accuracy (ties: smaller complexity, then lower trial);
    ``smallest``: least complexity (ties: higher accuracy, then lower trial); ``best-ratio``:
    highest accuracy / params (ties: higher accuracy, then lower trial); ``knee``: :func:`knee`;
    ``champion``: :func:`champion`, the key left out when the rule admits no member. An empty
    front gives {}. The front is used as given: pass :func:`pareto_members` output to drop
    dominated members first.
    """
    cx = _complexity_of(complexity)
    _check_rule(rule)
    if not front:
        return {}
    aliases = {
        "most-accurate": min(front, key=_most_accurate_key(cx)),
        "smallest": min(front, key=_smallest_key(cx)),
        "best-ratio": min(front, key=_ratio_key),
        "knee": knee(front, complexity),
    }
    chosen = champion(front, rule, complexity)
    if chosen is not None:
        aliases["champion"] = chosen
    return aliases
