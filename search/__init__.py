"""Optuna and MLflow: the search space, studies, tracking and the ``cnnas`` CLI."""

from __future__ import annotations

from ._config import (
    ConfigError,
    DataConfig,
    MlflowConfig,
    SpaceConfig,
    StudyConfig,
    load_config,
    load_mlflow_config,
)
from ._registry import (
    RegistryError,
    front_trials,
    load,
    parse_model_ref,
    pull,
    register_front,
    test_accuracy,
)
from ._report import Report, dashboard_artifact_store, write_report
from ._space import max_pools, suggest_spec
from ._study import (
    StudyFailing,
    StudyMismatch,
    StudyRun,
    make_sampler,
    open_storage,
    pareto_front,
    prepare,
    run_study,
    trial_spec,
)
from ._tracking import Tracker

__all__ = [
    "ConfigError",
    "DataConfig",
    "MlflowConfig",
    "RegistryError",
    "Report",
    "SpaceConfig",
    "StudyConfig",
    "StudyFailing",
    "StudyMismatch",
    "StudyRun",
    "Tracker",
    "dashboard_artifact_store",
    "front_trials",
    "load",
    "load_config",
    "load_mlflow_config",
    "make_sampler",
    "max_pools",
    "open_storage",
    "pareto_front",
    "parse_model_ref",
    "prepare",
    "pull",
    "register_front",
    "run_study",
    "suggest_spec",
    "test_accuracy",
    "trial_spec",
    "write_report",
]
