"""cnnas: multi-objective architecture search for image-classification CNNs.

The three layers are subpackages: ``cnnas.models`` (the architecture spec and the networks it
describes; torch only), ``cnnas.objectives`` (data and training) and ``cnnas.search`` (Optuna,
MLflow, the command line). Importing ``cnnas`` loads none of them.
"""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__"]
