"""Tests for search._aliases: which Pareto-front member gets which registry alias."""

from __future__ import annotations

import random

import pytest

from cnnas.search._aliases import (
    CHAMPION_RULES,
    ChampionRule,
    Member,
    assign_aliases,
    champion,
    knee,
    pareto_members,
)

ALIASES = {"most-accurate", "smallest", "best-ratio", "knee", "champion"}

# A classic convex front: accuracy rises steeply up to 5k params, then barely moves.
CONVEX = [
    Member(1, 0.80, 1_000, 10_000),
    Member(2, 0.88, 5_000, 50_000),
    Member(3, 0.90, 50_000, 500_000),
    Member(4, 0.905, 500_000, 5_000_000),
]


def by_trial(members: list[Member]) -> dict[int, Member]:
    return {m.trial: m for m in members}


# --- single and two-member fronts ---


@pytest.mark.parametrize("rule", CHAMPION_RULES)
@pytest.mark.parametrize("complexity", ["params", "macs"])
def test_front_of_one_gets_every_alias(rule: str, complexity: str) -> None:
    only = Member(7, 0.5, 100, 1_000)
    aliases = assign_aliases([only], ChampionRule(rule=rule), complexity)
    assert aliases == dict.fromkeys(ALIASES, only)
    assert knee([only], complexity) == only
    assert pareto_members([only], complexity) == [only]


def test_two_members() -> None:
    small, big = Member(1, 0.80, 1_000, 10_000), Member(2, 0.90, 100_000, 1_000_000)
    aliases = assign_aliases([small, big], ChampionRule())
    assert aliases["most-accurate"] == big
    assert aliases["smallest"] == small
    assert aliases["best-ratio"] == small
    assert aliases["knee"] == big  # two members: no knee to find, the most accurate
    assert aliases["champion"] == big


def test_knee_of_two_ties_prefers_smaller_then_lower_trial() -> None:
    a, b = Member(3, 0.9, 200, 10), Member(2, 0.9, 100, 20)
    assert knee([a, b]) == b
    assert knee([a, b], "macs") == a
    c = Member(1, 0.9, 200, 10)
    assert knee([a, c]) == c


def test_empty_front() -> None:
    assert assign_aliases([], ChampionRule()) == {}
    assert pareto_members([]) == []
    assert champion([], ChampionRule()) is None
    with pytest.raises(ValueError, match="empty"):
        knee([])


# --- the knee ---


def test_knee_of_convex_front() -> None:
    assert knee(CONVEX).trial == 2
    assert knee(CONVEX, "macs").trial == 2
    aliases = assign_aliases(CONVEX, ChampionRule(rule="knee"))
    assert aliases["knee"].trial == 2
    assert aliases["champion"].trial == 2
    assert aliases["most-accurate"].trial == 4
    assert aliases["smallest"].trial == 1


def test_knee_uses_log_complexity() -> None:
    # On a linear params axis trial 3 (50k of 500k) would look cheap and win; in log10 it is
    # two-thirds of the way along, and the 5k model is the knee.
    front = [
        Member(1, 0.50, 1_000, 0),
        Member(2, 0.85, 5_000, 0),
        Member(3, 0.97, 50_000, 0),
        Member(4, 1.00, 500_000, 0),
    ]
    assert knee(front).trial == 2


def test_knee_of_collinear_front_is_most_accurate() -> None:
    # Evenly spaced in log10 and in accuracy: every member lies on the extremes' line.
    front = [Member(i, 0.5 + 0.1 * i, 10 ** (i + 2), 0) for i in range(4)]
    assert knee(front) == front[-1]


def test_knee_ignores_members_below_the_line() -> None:
    # A concave front: the middle members are worse than interpolating the extremes.
    front = [
        Member(1, 0.50, 100, 0),
        Member(2, 0.52, 10_000, 0),
        Member(3, 0.55, 100_000, 0),
        Member(4, 0.90, 1_000_000, 0),
    ]
    assert knee(front).trial == 4


def test_knee_constant_accuracy_axis() -> None:
    # Identical accuracy: the axis normalises to 0, the extremes coincide, the smallest wins.
    front = [Member(1, 0.9, 10, 0), Member(2, 0.9, 100, 0), Member(3, 0.9, 1_000, 0)]
    assert knee(front).trial == 1


def test_knee_distance_tie_goes_to_most_accurate() -> None:
    # Two members at exactly the same objectives bulge equally: the lower trial wins.
    front = [*CONVEX, Member(0, 0.88, 5_000, 50_000)]
    assert knee(front).trial == 0


# --- ties in the aliases ---


def test_accuracy_tie_breakers() -> None:
    front = [
        Member(5, 0.9, 2_000, 100),
        Member(3, 0.9, 1_000, 300),
        Member(4, 0.9, 1_000, 200),
    ]
    assert assign_aliases(front, ChampionRule())["most-accurate"].trial == 3
    assert assign_aliases(front, ChampionRule(), "macs")["most-accurate"].trial == 5
    # Same accuracy and params: lower trial.
    assert assign_aliases(front, ChampionRule())["champion"].trial == 3


def test_complexity_tie_breakers() -> None:
    front = [
        Member(9, 0.7, 1_000, 50),
        Member(8, 0.8, 1_000, 60),
        Member(6, 0.8, 1_000, 60),
        Member(7, 0.6, 2_000, 50),
    ]
    aliases = assign_aliases(front, ChampionRule())
    assert aliases["smallest"].trial == 6  # higher accuracy, then lower trial
    aliases = assign_aliases(front, ChampionRule(), "macs")
    assert aliases["smallest"].trial == 9  # 50 MACs: higher accuracy than trial 7


def test_best_ratio_tie_breakers() -> None:
    # 0.5/1000 == 0.25/500 exactly: the higher accuracy wins, then the lower trial.
    front = [Member(1, 0.25, 500, 0), Member(2, 0.5, 1_000, 0), Member(3, 0.5, 1_000, 0)]
    assert assign_aliases(front, ChampionRule())["best-ratio"].trial == 2
    assert champion(front, ChampionRule(rule="best_ratio")).trial == 2


def test_best_ratio_uses_params_even_for_macs() -> None:
    front = [Member(1, 0.8, 1_000, 1_000_000), Member(2, 0.9, 100_000, 1_000)]
    assert assign_aliases(front, ChampionRule(), "macs")["best-ratio"].trial == 1


# --- pareto_members ---


def test_pareto_drops_dominated() -> None:
    dominated = [
        Member(10, 0.85, 50_000, 0),  # trial 3 is more accurate at the same size
        Member(11, 0.88, 6_000, 0),  # trial 2 is as accurate and smaller
        Member(12, 0.70, 600_000, 0),  # dominated by everything
    ]
    assert pareto_members(CONVEX + dominated) == CONVEX


def test_pareto_duplicates() -> None:
    # Identical objectives: neither dominates, both stay, ordered by trial; a duplicated
    # dominated pair goes entirely; the very same member given twice is kept once.
    a, b = Member(2, 0.9, 100, 0), Member(1, 0.9, 100, 0)
    loser, loser_twin = Member(3, 0.8, 100, 0), Member(4, 0.8, 100, 0)
    assert pareto_members([a, loser, b, loser_twin, a]) == [b, a]


def test_pareto_sort_order() -> None:
    front = [Member(3, 0.9, 300, 0), Member(1, 0.5, 100, 0), Member(2, 0.7, 200, 0)]
    assert [m.trial for m in pareto_members(front)] == [1, 2, 3]


def test_pareto_macs() -> None:
    members = [
        Member(1, 0.80, 400, 900),
        Member(2, 0.90, 2_000, 100),
        Member(3, 0.85, 500, 200),
    ]
    assert [m.trial for m in pareto_members(members, "params")] == [1, 3, 2]
    # In MACs trial 2 is both the most accurate and the cheapest.
    assert [m.trial for m in pareto_members(members, "macs")] == [2]


# --- champion rules ---


def test_champion_most_accurate_limits() -> None:
    assert champion(CONVEX, ChampionRule()).trial == 4
    assert champion(CONVEX, ChampionRule(max_params=50_000)).trial == 3
    assert champion(CONVEX, ChampionRule(max_params=49_999)).trial == 2
    assert champion(CONVEX, ChampionRule(max_macs=10_000)).trial == 1
    both = ChampionRule(max_params=500_000, max_macs=500_000)
    assert champion(CONVEX, both).trial == 3


def test_champion_limit_nobody_meets() -> None:
    rule = ChampionRule(max_params=999)
    assert champion(CONVEX, rule) is None
    aliases = assign_aliases(CONVEX, rule)
    assert set(aliases) == ALIASES - {"champion"}


def test_champion_smallest_within() -> None:
    # 0.905 - 0.005 = 0.90: trial 3 is exactly half a point behind and counts.
    assert champion(CONVEX, ChampionRule(rule="smallest_within")).trial == 3
    assert champion(CONVEX, ChampionRule(rule="smallest_within", within=0.004)).trial == 4
    assert champion(CONVEX, ChampionRule(rule="smallest_within", within=0.0)).trial == 4
    assert champion(CONVEX, ChampionRule(rule="smallest_within", within=0.2)).trial == 1


def test_champion_smallest_within_zero_ties() -> None:
    front = [Member(2, 0.9, 300, 0), Member(1, 0.9, 300, 0), Member(3, 0.9, 400, 0)]
    assert champion(front, ChampionRule(rule="smallest_within", within=0.0)).trial == 1


def test_champion_knee_and_best_ratio() -> None:
    assert champion(CONVEX, ChampionRule(rule="knee")) == knee(CONVEX)
    assert champion(CONVEX, ChampionRule(rule="best_ratio")).trial == 1


# --- errors ---


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="rule") as info:
        champion(CONVEX, ChampionRule(rule="biggest"))
    assert "biggest" in str(info.value)
    assert all(name in str(info.value) for name in CHAMPION_RULES)
    with pytest.raises(ValueError, match="biggest"):
        assign_aliases(CONVEX, ChampionRule(rule="biggest"))


def test_negative_within() -> None:
    with pytest.raises(ValueError, match="within"):
        champion(CONVEX, ChampionRule(rule="smallest_within", within=-0.01))


@pytest.mark.parametrize(
    "call",
    [
        lambda: pareto_members(CONVEX, "flops"),
        lambda: knee(CONVEX, "flops"),
        lambda: champion(CONVEX, ChampionRule(), "flops"),
        lambda: assign_aliases(CONVEX, ChampionRule(), "flops"),
        lambda: assign_aliases([], ChampionRule(), "flops"),
    ],
)
def test_unknown_complexity(call) -> None:
    with pytest.raises(ValueError, match="complexity") as info:
        call()
    assert "flops" in str(info.value)
    assert "params" in str(info.value) and "macs" in str(info.value)


@pytest.mark.parametrize("accuracy", [float("nan"), float("inf")])
def test_member_rejects_non_finite_accuracy(accuracy: float) -> None:
    with pytest.raises(ValueError, match="accuracy"):
        Member(1, accuracy, 1, 1)


def test_member_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="params"):
        Member(1, 0.5, -1, 1)


# --- order independence ---


ORDER_FRONT = [
    *CONVEX,
    Member(0, 0.88, 5_000, 50_000),  # exact twin of trial 2
    Member(5, 0.905, 500_000, 4_000_000),  # ties trial 4 in accuracy and params
    Member(6, 0.80, 1_000, 10_000),  # twin of trial 1
    Member(7, 0.75, 1_000, 5_000),  # smaller in MACs only
    Member(8, 0.84, 20_000, 20_000),  # dominated in params
    Member(9, 0.86, 5_000, 60_000),  # dominated
]


@pytest.mark.parametrize("complexity", ["params", "macs"])
@pytest.mark.parametrize(
    "rule",
    [
        ChampionRule(),
        ChampionRule(max_params=10_000),
        ChampionRule(rule="smallest_within"),
        ChampionRule(rule="smallest_within", within=0.0),
        ChampionRule(rule="knee"),
        ChampionRule(rule="best_ratio"),
    ],
)
def test_input_order_does_not_matter(rule: ChampionRule, complexity: str) -> None:
    expected_front = pareto_members(ORDER_FRONT, complexity)
    expected_all = assign_aliases(ORDER_FRONT, rule, complexity)
    expected = assign_aliases(expected_front, rule, complexity)
    rng = random.Random(20240611)
    for _ in range(20):
        members = ORDER_FRONT.copy()
        rng.shuffle(members)
        front = pareto_members(members, complexity)
        assert front == expected_front
        assert assign_aliases(members, rule, complexity) == expected_all
        shuffled_front = front.copy()
        rng.shuffle(shuffled_front)
        assert assign_aliases(shuffled_front, rule, complexity) == expected
        assert knee(shuffled_front, complexity) == expected["knee"]


def test_expected_aliases_of_order_front() -> None:
    front = pareto_members(ORDER_FRONT)
    assert [m.trial for m in front] == [1, 6, 0, 2, 3, 4, 5]
    aliases = assign_aliases(front, ChampionRule())
    assert {k: m.trial for k, m in aliases.items()} == {
        "most-accurate": 4,  # ties trial 5 in accuracy and params: lower trial
        "smallest": 1,  # twin of trial 6: lower trial
        "best-ratio": 1,
        "knee": 0,  # twin of trial 2: lower trial
        "champion": 4,
    }
    macs = assign_aliases(pareto_members(ORDER_FRONT, "macs"), ChampionRule(), "macs")
    assert {k: m.trial for k, m in macs.items()} == {
        "most-accurate": 5,  # fewer MACs than trial 4
        "smallest": 7,
        "best-ratio": 1,
        "knee": 0,
        "champion": 5,
    }
    assert by_trial(pareto_members(ORDER_FRONT, "macs")).keys() == {7, 1, 6, 0, 2, 8, 3, 5}
