"""The networks the sections run: the paper's U-Net and MR with random output layers, or a
trained file's (``BenchConfig.weights``, a bundled name works too), loaded afresh each time
(TTA changes its modules)."""

from __future__ import annotations

import json

import torch

from ..models import build
from ..weights import load_weights
from .config import BenchConfig


def mr(device: torch.device, config: BenchConfig) -> torch.nn.Module:
    """MR, frozen."""
    weights = load(config)
    if weights is not None and weights.reblur is not None:
        module = weights.reblur.to(device).eval()
    else:
        torch.manual_seed(0)
        module = build("reblur").to(device).eval()
        torch.nn.init.normal_(module.tail.weight, std=0.02)
    module.requires_grad_(False)
    return module


def load(config: BenchConfig):
    """The weight file of ``config.weights``, or None for the paper's networks."""
    return load_weights(config.weights) if config.weights else None


def model_name(config: BenchConfig) -> str:
    if config.weights:
        return str(config.weights)
    return "unet " + json.dumps(config.model or "paper defaults")


def md(device: torch.device, config: BenchConfig) -> torch.nn.Module:
    weights = load(config)
    if weights is not None:
        return weights.deblur.to(device).eval()
    torch.manual_seed(0)
    module = build("unet", **config.model).to(device).eval()
    torch.nn.init.normal_(module.tail.weight, std=0.02)
    return module
