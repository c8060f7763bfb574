"""Tests for search._space.check_start_from and study.start_from in real studies on digits.

``study.start_from`` names architectures a new study tries first, as trial parameters. The check
replays each point through the space as the study will, so a typo, a value the space does not
offer or a network over the budgets is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState

from cnnas.models import count_macs, count_params, rules_cnn
from cnnas.objectives import fit
from cnnas.search import ConfigError, load_config, prepare, run_study
from cnnas.search._config import SpaceConfig, load_preset
from cnnas.search._space import check_start_from, suggest_augment, suggest_spec
from tests.search._helpers import SMALL_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)

FMNIST = (1, 28, 28)
# The CPU preset's space: what the benchmark's seeded variant starts from.
CPU_SPACE = load_preset("fashion-mnist-cpu").space
# A whole architecture of that space: every parameter it samples is named.
GAP_16_32_64 = {
    "blocks": 3,
    "convs": 1,
    "base_filters": 16,
    "growth": "doubling",
    "kernel": 3,
    "batch_norm": True,
    "block_dropout": 0.1,
    "pool_0": "max",
    "pool_1": "max",
    "pool_2": "max",
    "aggregation": "gap",
    "dense_layers": 0,
}


def check(points: list[dict[str, Any]], space: SpaceConfig = CPU_SPACE, **budgets: Any) -> None:
    check_start_from(points, space, FMNIST, 10, **budgets)


def test_a_whole_architecture_is_the_network_the_study_builds():
    check([GAP_16_32_64])
    trial = FixedTrial(GAP_16_32_64)  # every parameter given: nothing is left to sample
    spec = suggest_spec(trial, CPU_SPACE, FMNIST, 10)
    suggest_augment(trial, CPU_SPACE)
    assert spec.summary() == "16c3+bn>max~0.1 | 32c3+bn>max~0.1 | 64c3+bn>max~0.1 | gap | 10"
    assert count_params(spec) == 24_058


def test_the_cpu_preset_starts_from_the_rules_net_at_half_width():
    # Seed 002's rules of thumb (cnnas.models.rules_cnn: 32-32-pool-64-64-pool-dense128, batch
    # norm, dropout 0.4) with half its filters, so that it fits the preset's MAC budget, and
    # dropout 0.2: measured better for the final phase's length (docs/search-space.md).
    preset = load_preset("fashion-mnist-cpu")
    point = preset.study.start_from[0]
    check([point], max_macs=preset.study.max_macs)
    spec = suggest_spec(FixedTrial(point), preset.space, FMNIST, 10)
    rules = rules_cnn(FMNIST, 10)
    assert [b.filters for b in spec.blocks] == [b.filters // 2 for b in rules.blocks]
    for ours, theirs in zip(spec.blocks, rules.blocks, strict=True):
        assert (ours.convs, ours.kernel, ours.batch_norm, ours.pool) == (
            theirs.convs, theirs.kernel, theirs.batch_norm, theirs.pool
        )  # fmt: skip
        assert (ours.dropout, theirs.dropout) == (0.2, 0.4)
    assert spec.aggregation == rules.aggregation
    assert [d.width for d in spec.dense] == [d.width for d in rules.dense]
    assert [d.dropout for d in spec.dense] == [0.2]
    assert (count_params(spec), count_macs(spec)) == (218_586, 4_830_720)
    assert count_macs(spec) <= preset.study.max_macs < count_macs(rules)


def test_the_cpu_presets_second_start_is_the_rules_layout_in_the_champions_size_class():
    # The same two blocks of two 3x3 convs with batch norm and max pooling, 16 filters
    # throughout and no dense layer: a fully given network below registry.champion_max_params
    # (and below the smallest standard network it is compared with, 31.9k).
    preset = load_preset("fashion-mnist-cpu")
    _, point = preset.study.start_from
    check([point], max_macs=preset.study.max_macs)
    spec = suggest_spec(FixedTrial(point), preset.space, FMNIST, 10)
    rules = rules_cnn(FMNIST, 10)
    assert [b.filters for b in spec.blocks] == [16, 16]
    for ours, theirs in zip(spec.blocks, rules.blocks, strict=True):
        assert (ours.convs, ours.kernel, ours.batch_norm, ours.pool) == (
            theirs.convs, theirs.kernel, theirs.batch_norm, theirs.pool
        )  # fmt: skip
    assert spec.aggregation == "flatten" and spec.dense == ()
    assert count_params(spec) == 15_034 <= preset.registry.champion_max_params


def test_a_partial_point_passes_and_the_rest_is_sampled():
    check([{"blocks": 2, "base_filters": 32}, {"kernel": 5}])


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"kernal": 3}, r"\[0\]\.kernal: not a parameter this architecture samples.*kernel"),
        # pool_2 is sampled only for a third block.
        ({"blocks": 2, "pool_2": "max"}, r"\[0\]\.pool_2: not a parameter this architecture"),
        ({"kernel": 4}, r"\[0\]\.kernel: 4 is not offered by the space; allowed: one of 3, 5$"),
        ({"blocks": 9}, r"\[0\]\.blocks: 9 is not offered by the space; allowed: from 1 to 4$"),
        (
            {"block_dropout": 0.07},
            r"\[0\]\.block_dropout: 0.07 is not .*0.0 to 0.5 in steps of 0.05$",
        ),
        ({"block_dropout": 0.55}, r"\[0\]\.block_dropout: 0.55 is not offered"),
        # true == 1 in Python, but it is not one conv.
        ({"convs": True}, r"\[0\]\.convs: true is not offered by the space; allowed: one of 1, 2"),
        ({"batch_norm": 1}, r"\[0\]\.batch_norm: 1 is not offered.*one of true, false$"),
        ({"blocks": 2.0}, r"\[0\]\.blocks: 2.0 is not offered"),
        ({"pool_0": "none"}, r"\[0\]\.pool_0: 'none' is not offered.*max, avg, conv$"),
    ],
)
def test_a_point_the_space_cannot_propose_is_refused(point, message):
    with pytest.raises(ConfigError, match=r"^study\.start_from" + message):
        check([point])


def test_the_error_names_the_point_that_is_wrong():
    with pytest.raises(ConfigError, match=r"^study\.start_from\[1\]\.kernel"):
        check([{"kernel": 3}, {"kernel": 7}])


def test_a_dimension_with_one_value_is_fixed_and_cannot_be_named():
    space = load_preset("fashion-mnist-cpu").replace("space", kernels=[3]).space
    with pytest.raises(ConfigError, match=r"\.kernel: not a parameter.*one allowed value is fixed"):
        check([{"kernel": 3}], space)


def test_a_whole_architecture_over_a_budget_is_refused():
    spec = suggest_spec(FixedTrial(GAP_16_32_64), CPU_SPACE, FMNIST, 10)
    params, macs = count_params(spec), count_macs(spec)
    check([GAP_16_32_64], max_params=params, max_macs=macs)  # at the limits: accepted
    with pytest.raises(ConfigError, match=rf"has {params:,} parameters, over study.max_params"):
        check([GAP_16_32_64], max_params=params - 1)
    with pytest.raises(ConfigError, match=rf"has {macs:,} MACs, over study.max_macs"):
        check([GAP_16_32_64], max_macs=macs - 1)
    # A partial point is completed by the sampler, and the budgets judge what it draws.
    partial = {k: v for k, v in GAP_16_32_64.items() if k != "dense_layers"}
    check([partial], max_params=params - 1)


# --- in a real study ------------------------------------------------------------------------------

FIRST = {"blocks": 2, "base_filters": 8, "pool_0": "none", "pool_1": "max", "aggregation": "gap"}
SECOND = {"blocks": 1, "base_filters": 4}


def config_file(tmp_path: Path, seed_mlflow, start_from: Any, trials: int = 4) -> Path:
    project = tmp_path / "runs"
    seed_mlflow(project)
    cfg = {
        "study": {
            "name": "seeded",
            "trials": trials,
            "sampler": "random",
            "project_dir": str(project),
            "start_from": start_from,
        },
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "batch_size": 256, "accelerator": "cpu"},
        "space": SMALL_SPACE,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_new_study_runs_the_points_first_and_a_resumed_one_does_not_again(tmp_path, seed_mlflow):
    path = config_file(tmp_path, seed_mlflow, [FIRST, SECOND], trials=3)
    study = run_study(prepare(load_config(path), trainer=fit))
    first, second, _ = study.trials
    # What a point leaves out (growth here) is sampled.
    assert set(first.params) == {*FIRST, "growth"}
    assert {k: first.params[k] for k in FIRST} == FIRST
    assert {k: second.params[k] for k in SECOND} == SECOND
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # Resumed with two trials more: the points are not queued again.
    more = load_config(path).replace("study", trials=5)
    study = run_study(prepare(more, trainer=fit))
    queued = ["fixed_params" in t.system_attrs for t in study.trials]
    assert queued == [True, True, False, False, False]


def test_a_bad_point_fails_before_anything_is_written(tmp_path, seed_mlflow):
    path = config_file(tmp_path, seed_mlflow, [FIRST, {"blocks": 3}])
    with pytest.raises(ConfigError, match=r"start_from\[1\]\.blocks: 3 is not offered"):
        prepare(load_config(path), trainer=fit)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mlflow.db"]  # the seed
