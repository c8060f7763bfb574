"""Seed 000's experiment: the three variants, linear CKA, the effective rank, the run."""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from cnnas.models import build, infer_shapes
from cnnas.objectives import ImageData, TrainConfig, fit
from cnnas.search.cli import build_parser, command_of
from cnnas.search.errors import UsageError
from cnnas.search.experiments import (
    VARIANTS,
    ExperimentLog,
    HeadsSettings,
    effective_rank,
    head_spec,
    linear_cka,
    run_heads,
    section_activations,
)

# --- linear CKA on hand-made cases ---------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randn(40, 9, generator=g, dtype=torch.float64) + x @ torch.randn(
        6, 9, generator=g, dtype=torch.float64
    )
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.05 < base < 0.999
    assert linear_cka(x, 3.5 * y @ q) == pytest.approx(base, abs=1e-10)
    assert linear_cka(0.1 * x, y) == pytest.approx(base, abs=1e-10)


def test_cka_of_independent_features_is_near_zero_for_large_n() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(5000, 4, generator=g), torch.randn(5000, 4, generator=g)
    assert linear_cka(x, y) < 0.01


def test_cka_gram_and_feature_forms_agree() -> None:
    # n < p takes the n x n Gram form, n >= p the feature form: the same number.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 40, generator=g, dtype=torch.float64) + torch.randn(
        30, 40, generator=g, dtype=torch.float64
    )
    wide = linear_cka(x, y)  # Gram form (40 features > 30 examples)
    narrow = linear_cka(x, y[:, :20])  # feature form
    x2, y2 = x.repeat(2, 1), y.repeat(2, 1)  # 60 examples > 40 features: feature form
    assert linear_cka(x2, y2) == pytest.approx(wide, abs=1e-10)
    assert 0 < narrow < 1


def test_cka_refuses_mismatched_examples() -> None:
    with pytest.raises(ValueError, match="need"):
        linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


def test_effective_rank_is_the_smallest_width_within_tolerance() -> None:
    sweep = [(8, 0.80), (16, 0.855), (32, 0.87), (64, 0.86)]
    assert effective_rank(sweep, 0.86, 0.01) == 16
    assert effective_rank(sweep, 0.86, 0.0) == 32
    assert effective_rank([(8, 0.1), (64, 0.5)], 0.9, 0.01) == 64


# --- the variants --------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "extra_heads"), [((1, 8, 8), 1), ((1, 28, 28), 2)])
def test_variants_differ_only_in_aggregation_and_heads(shape, extra_heads: int) -> None:
    specs = {v: head_spec(v, shape, 10, filters=(4, 8), dense_width=16) for v in VARIANTS}
    assert specs["flatten"].aggregation == "flatten"
    assert specs["multiscale"].aggregation == "multiscale" and specs["multiscale"].heads == "single"
    assert specs["three-heads"].heads == "multi"
    assert {s.blocks for s in specs.values()} == {specs["flatten"].blocks}
    aux = [la for la in infer_shapes(specs["three-heads"]) if la.name.startswith("aux_heads.")]
    # A softmax on the 2x2 and on the 4x4 section; an 8x8 image leaves a 2x2 map, no 4x4 one.
    assert len(aux) == extra_heads
    for spec in specs.values():
        heads = build(spec).forward_heads(torch.zeros(2, *shape))
        assert heads[0].shape == (2, 10)


def test_head_variants_train_and_their_sections_are_measured(digits: ImageData) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, accelerator="cpu")
    for variant in VARIANTS:
        spec = head_spec(variant, digits.input_shape, 10, filters=(4, 8), dense_width=16)
        result = fit(spec, digits, cfg)
        assert 0 <= result.val_acc <= 1 and not math.isnan(result.train_loss)
        if variant == "three-heads":
            assert "val_acc_head1" in result.curves
        sections = section_activations(result.model, digits.val_x[:50], digits.mean, digits.std)
        # 8x8 digits -> 4x4 -> 2x2 map: the map and its 2x2 pool; no 4x4 section fits.
        assert [s.shape for s in sections] == [(50, 32), (50, 8)]


def _tiny() -> HeadsSettings:
    return HeadsSettings(
        filters=(4, 8),
        dense_width=16,
        seeds=1,
        rank_widths=(4,),
        cka_images=100,
        train=TrainConfig(epochs=1, batch_size=64, accelerator="cpu"),
    )


@pytest.mark.slow
def test_run_writes_report_tables_plots_and_mlflow_runs(
    digits: ImageData, tmp_path: Path, seed_mlflow
) -> None:
    project = tmp_path / "project"
    seed_mlflow(project)
    log = ExperimentLog("cnnas-heads", project)
    out = io.StringIO()
    result = run_heads(digits, _tiny(), tmp_path / "report", log, out=out)

    # 2 fractions x 3 variants x 1 seed, then one narrower width per variant.
    assert len(result.runs) == 6 + 3
    with (tmp_path / "report" / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["fraction"], r["variant"]) for r in rows} == {
        (f, v) for f in ("0.25", "1.0") for v in VARIANTS
    }
    quarter = next(r for r in rows if r["fraction"] == "0.25")
    whole = next(r for r in rows if r["fraction"] == "1.0")
    assert int(quarter["train_images"]) * 4 == pytest.approx(int(whole["train_images"]), abs=10)
    with (tmp_path / "report" / "redundancy.csv").open() as f:
        red = list(csv.DictReader(f))
    assert [r["variant"] for r in red] == list(VARIANTS)
    assert all(int(r["effective_rank"]) in (4, 16) for r in red)
    report = (tmp_path / "report" / "report.md").read_text()
    claims = report.split("## Does the seed's claim hold here?")[1].split("##")[0]
    verdicts = [line for line in claims.splitlines() if line.startswith("- **")]
    assert len(verdicts) == 3
    assert all(any(w in v for w in ("HELD", "INCONCLUSIVE")) for v in verdicts)
    assert (tmp_path / "report" / "convergence.png").stat().st_size > 0
    assert "[9/9]" in out.getvalue().replace(" ", "")

    client = MlflowClient(tracking_uri=log.uri)
    exp = client.get_experiment_by_name("cnnas-heads")
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 9
    assert {r.data.tags.get("cnnas.variant") for r in runs} >= set(VARIANTS)


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["experiment", "heads", *argv])


def _run(args: argparse.Namespace) -> int:
    return command_of(args)(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--filters", "8,x"], "--filters takes comma-separated integers"),
        (["--rank-tolerance", "1.5"], r"--rank-tolerance must be in \[0, 1\)"),
        (["--dataset", "imagenet-21k"], "--dataset: unknown dataset 'imagenet-21k'"),
        (["--cka-images", "1"], "--cka-images must be at least 2"),
    ],
)
def test_bad_options_raise_a_usage_error_naming_the_option(argv, message, tmp_path) -> None:
    args = _parse("--preset", "small", "--project-dir", str(tmp_path), *argv)
    with pytest.raises(UsageError, match=message):
        _run(args)
    assert not (tmp_path / "mlflow.db").exists()
