"""The networks of reblur-deploy, one file each, built by name with ``build(name, **config)``."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .blocks import ResBlock
from .dhn import DHN
from .reblur import Reblur
from .srn import SRN
from .unet import UNet

# name -> class; every class takes the paper's hyper-parameters as keyword arguments,
# stores them in ``.config`` (so weight files can rebuild it) and has ``.size_divisor``.
MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "srn": SRN, "dhn": DHN, "reblur": Reblur}


def build(name: str, **config) -> nn.Module:
    """Build a network by name, e.g. ``build("unet", widths=(64, 128, 192), n_blocks=8)``."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}"
        ) from None
    try:
        return cls(**config)
    except TypeError as e:  # unknown keyword
        raise ConfigError(f"invalid config for model {name!r}: {e}") from None


def name_of(model: nn.Module) -> str:
    """The registry name of a built network (the inverse of ``build``)."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ConfigError(f"{type(model).__name__} is not a reblur-deploy network")


__all__ = ["DHN", "MODELS", "SRN", "Reblur", "ResBlock", "UNet", "build", "name_of"]
