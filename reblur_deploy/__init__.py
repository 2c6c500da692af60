"""reblur-deploy: deblurring with the reblurring losses and test-time adaptation of
Nah et al., "Clean Images are Hard to Reblur" (ICLR 2022), ready to deploy."""

from ._version import __version__
from .errors import (
    ConfigError,
    DependencyError,
    InputError,
    NotAvailableError,
    ReblurError,
    WeightsError,
)
from .histmatch import match_histograms
from .losses import blur_score
from .pipeline import Deblurrer
from .tta import TTAConfig
from .weights import LoadedWeights, load_weights, save_weights

__all__ = [
    "ConfigError",
    "Deblurrer",
    "DependencyError",
    "InputError",
    "LoadedWeights",
    "NotAvailableError",
    "ReblurError",
    "TTAConfig",
    "WeightsError",
    "__version__",
    "blur_score",
    "load_weights",
    "match_histograms",
    "save_weights",
]
