"""Losses for the paper's ablations (Tables 4 and E), used only in training.

* ``VGG19Features`` / ``PerceptualLoss``: |φ(L) − φ(S)| with φ a VGG-19 feature map (Simonyan
  and Zisserman, 2015), on inputs normalised with the ImageNet mean and standard deviation.
  The layer list has the indices of torchvision's ``vgg19().features``, so its weight file
  (``vgg19-dcbb9e9d.pth``) loads directly. Weights come only from a file the user gives: they are
  never downloaded. A ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors only, no
  code); a ``.safetensors`` file with the same keys is read with safetensors.
* ``PatchDiscriminator`` (the 70×70 PatchGAN of Isola et al., CVPR 2017, with instance norm)
  and the non-saturating GAN losses ``generator_loss`` / ``discriminator_loss``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reblur_deploy.errors import ConfigError, WeightsError

# torchvision's vgg19 "E" configuration: channels per conv, "M" = 2×2 max pooling
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layer_names() -> list[str]:
    """Names of the modules of ``features`` in order: conv1_1, relu1_1, ..., pool5."""
    names, block, index = [], 1, 1
    for entry in VGG19_LAYOUT:
        if entry == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


class VGG19Features(nn.Module):
    """VGG-19's convolutional part up to and including ``layer`` (e.g. ``relu5_4``)."""

    def __init__(self, layer: str = "relu5_4"):
        super().__init__()
        names = vgg19_layer_names()
        if layer not in names:
            raise ConfigError(f"unknown VGG-19 layer {layer!r}; choose one of {', '.join(names)}")
        modules: list[nn.Module] = []
        channels = 3
        for entry in VGG19_LAYOUT:
            if entry == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU(inplace=True)]
                channels = entry
        self.layer = layer
        self.features = nn.Sequential(*modules[: names.index(layer) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)

    def load_file(self, path: str | os.PathLike) -> VGG19Features:
        """Load torchvision-style ``features.N.weight/bias`` tensors; other keys are ignored."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"no VGG-19 weight file {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling refused, corrupt file, ...
            raise WeightsError(f"cannot read VGG-19 weights {path}: {e}") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{path} holds no state dict of tensors")
        wanted = self.features.state_dict()
        loaded = {}
        for key, value in wanted.items():
            tensor = state.get(f"features.{key}", state.get(key))
            if tensor is None:
                raise WeightsError(f"{path}: features.{key} is missing (not VGG-19 weights?)")
            if tuple(tensor.shape) != tuple(value.shape):
                raise WeightsError(
                    f"{path}: features.{key} has shape {tuple(tensor.shape)}, "
                    f"VGG-19 needs {tuple(value.shape)}"
                )
            loaded[key] = tensor
        self.features.load_state_dict(loaded)
        return self


class PerceptualLoss(nn.Module):
    """mean |φ(L) − φ(S)| on a frozen VGG-19 layer; φ(S) is computed without gradient."""

    def __init__(self, weights: str | os.PathLike, layer: str = "relu5_4"):
        super().__init__()
        self.vgg = VGG19Features(layer).load_file(weights).eval()
        self.vgg.requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # always in eval mode (no dropout/bn anyway)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.vgg(target)
        return F.l1_loss(self.vgg(prediction), target_features)


class PatchDiscriminator(nn.Module):
    """70×70 PatchGAN: 4×4 convs C64 (stride 2, no norm) − C128 − C256 (stride 2) − C512
    (stride 1), instance norm and LeakyReLU(0.2), then a 4×4 conv to one logit per patch."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.config = {"width": int(width)}
        w = width
        layers: list[nn.Module] = [nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out, stride in ((w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 1)):
            layers += [
                nn.Conv2d(c_in, c_out, 4, stride, 1),
                nn.InstanceNorm2d(c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(8 * w, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the deblurred images: −log D(L)."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """−log D(S) − log(1 − D(L)), halved."""
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return 0.5 * (real + fake)
