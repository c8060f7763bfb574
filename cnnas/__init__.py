"""cnnas: multi-objective architecture search for image-classification CNNs.

The three layers are subpackages: ``cnnas.models`` (the architecture spec and the networks it
describes; torch only), ``cnnas.objectives`` (data and training) and ``cnnas.search`` (Optuna,
MLflow, the command line). Importing ``cnnas`` loads none of them; the few names below are the
small public API, each imported on first use:

    import cnnas
    model = cnnas.load("./model")                          # a pulled folder: nn.Module
    predictor = cnnas.load_predictor("models:/cnnas-digits-quick@champion",
                                     tracking_uri="sqlite:///cnnas-runs/mlflow.db")
    predictor.predict(images).labels                       # images in, classes out
"""

from __future__ import annotations

from cnnas._lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    "ArchSpec": "cnnas.models",
    "CnnasError": "cnnas.models",
    "build": "cnnas.models",
    "Predictor": "cnnas.objectives",
    "load_dataset": "cnnas.objectives",
    "load": "cnnas.search",
    "load_predictor": "cnnas.search",
}

__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
