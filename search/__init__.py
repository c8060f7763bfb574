"""Optuna and MLflow: the search space, studies, tracking, the registry, reports and the CLI.

Names are imported on first use (``cnnas._lazy``), so ``import cnnas.search`` is cheap and the
command line can print its help without the heavy libraries.
"""

from __future__ import annotations

from cnnas._lazy import lazy_exports

_EXPORTS = {
    # configuration
    "DataConfig": "._config",
    "MlflowConfig": "._config",
    "SpaceConfig": "._config",
    "StudyConfig": "._config",
    "load_config": "._config",
    "load_mlflow_config": "._config",
    "load_preset": "._config",
    "preset_names": "._config",
    # errors
    "CnnasError": ".errors",
    "ConfigError": ".errors",
    "RegistryError": ".errors",
    "StudyFailing": ".errors",
    "StudyMismatch": ".errors",
    "UsageError": ".errors",
    # the space
    "max_pools": "._space",
    "suggest_spec": "._space",
    # studies and their trials
    "StudyRun": "._study",
    "make_sampler": "._study",
    "prepare": "._study",
    "run_study": "._study",
    "TrialRecord": "._records",
    "front": "._records",
    "records": "._records",
    "open_storage": "._storage",
    "Tracker": "._tracking",
    # the result
    "load": "._registry",
    "load_predictor": "._registry",
    "parse_model_ref": "._registry",
    "pull": "._registry",
    "register_front": "._registry",
    "test_accuracy": "._registry",
    "Report": ".report",
    "dashboard_artifact_store": ".report",
    "write_report": ".report",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
