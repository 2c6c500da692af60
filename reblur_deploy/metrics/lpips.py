"""LPIPS (Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric", CVPR 2018), version 0.1 with the AlexNet backbone — lower is closer.

For two RGB images in [0, 1]:

1. scale to [−1, 1], then normalise each channel with LPIPS's fixed shift (−0.030, −0.088,
   −0.188) and scale (0.458, 0.448, 0.450);
2. take the five ReLU outputs of AlexNet's convolutional trunk (64, 192, 384, 256, 256 channels);
3. unit-normalise each feature vector over channels (ε = 1e-10), square the difference of the two
   images' vectors, weight the channels with the learned non-negative v0.1 linear head (a 1×1
   convolution without bias) and average over the spatial positions;
4. sum over the five layers.

The linear heads ship with the package (``assets/metrics/lpips_alex_v0.1.safetensors``,
converted from the lpips package's ``weights/v0.1/alex.pth``, BSD-2-Clause). The ImageNet
AlexNet weights underneath (torchvision's ``alexnet-owt-7be5be79.pth``, 233 MB) do not ship and
are never downloaded: ``find_backbone`` looks for them in, in order, the path given,
``$REBLUR_LPIPS_BACKBONE`` and the torch hub cache (``<torch hub dir>/checkpoints/``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from ..errors import InputError, WeightsError
from .distortion import to_8bit

HEADS = Path(__file__).resolve().parents[1] / "assets" / "metrics" / "lpips_alex_v0.1.safetensors"
BACKBONE_ENV = "REBLUR_LPIPS_BACKBONE"
BACKBONE_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet
CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


class AlexNetFeatures(nn.Module):
    """The convolutional trunk of AlexNet in torchvision's layout (Krizhevsky's "one weird
    trick" variant: 64-192-384-256-256 channels), returning the output of each ReLU.

    The layer indices match torchvision's ``features.<i>`` so its state dict loads as it is.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),
        )
        self.taps = (1, 4, 7, 9, 11)  # the ReLUs LPIPS compares

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outputs.append(x)
        return outputs


def load_heads(path: str | os.PathLike = HEADS) -> list[torch.Tensor]:
    """The five v0.1 linear heads, each a 1×C×1×1 tensor of non-negative channel weights."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        heads = [f.get_tensor(f"lin{i}.weight") for i in range(len(CHANNELS))]
    for head, channels in zip(heads, CHANNELS, strict=True):
        if head.shape != (1, channels, 1, 1):
            raise WeightsError(f"{path}: LPIPS head of shape {tuple(head.shape)}, need {channels}")
    return heads


def find_backbone(path: str | os.PathLike | None = None) -> Path | None:
    """The AlexNet weight file to use, or None when none is configured or cached.

    A path that is given (argument or ``$REBLUR_LPIPS_BACKBONE``) but does not exist is an error,
    so a typo never turns into a silent "n/a".
    """
    given = path if path is not None else os.environ.get(BACKBONE_ENV) or None
    if given is not None:
        found = Path(given).expanduser()
        if not found.is_file():
            origin = "--lpips-backbone" if path is not None else f"${BACKBONE_ENV}"
            raise WeightsError(f"LPIPS backbone {str(found)!r} ({origin}) does not exist")
        return found
    cached = Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILE
    return cached if cached.is_file() else None


def backbone_hint() -> str:
    """One line saying how to make LPIPS available."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"LPIPS needs the ImageNet AlexNet weights (torchvision's {BACKBONE_FILE}; not shipped, "
        f"never downloaded): pass --lpips-backbone PATH, set ${BACKBONE_ENV}, or put the file "
        f"in {cache}"
    )


def load_backbone(path: str | os.PathLike) -> AlexNetFeatures:
    """AlexNetFeatures with weights from torchvision's file (a state dict; loaded with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
    containers) or from a safetensors file with the same tensor names."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format: all say the same
        raise WeightsError(f"cannot read the LPIPS backbone {path}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = AlexNetFeatures()
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not a state dict of AlexNet weights")
    for key, value in expected.items():
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"{path} does not hold torchvision's AlexNet: {key} of shape "
                f"{tuple(value.shape)} is missing or has another shape"
            )
    model.load_state_dict({key: state[key] for key in expected})  # classifier.* is unused
    return model.eval()


def scale_input(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] → LPIPS's network input: 2x − 1, then (· − shift) / scale per channel."""
    shift = torch.tensor(SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * 2 - 1 - shift) / scale


def unit_normalize(features: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's channel vector by its L2 norm (+ ε)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet). ``forward(a, b)`` on N×3×H×W tensors in [0, 1] returns N distances."""

    def __init__(self, backbone: AlexNetFeatures, heads: list[torch.Tensor] | None = None):
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        heads = load_heads() if heads is None else heads
        self.heads = nn.ParameterList([nn.Parameter(h.clone(), requires_grad=False) for h in heads])

    def compare_features(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """Steps 3 and 4 of the module docstring on two lists of N×C×h×w features → N values."""
        total = 0
        for a, b, head in zip(fa, fb, self.heads, strict=True):
            diff = (unit_normalize(a) - unit_normalize(b)) ** 2
            weighted = (diff * head.view(1, -1, 1, 1)).sum(dim=1)  # the 1×1 conv, no bias
            total = total + weighted.mean(dim=(1, 2))
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise InputError(
                f"LPIPS compares two N×3×H×W tensors of one shape, got {tuple(a.shape)} and "
                f"{tuple(b.shape)}"
            )
        both = self.backbone(scale_input(torch.cat([a, b])))
        n = a.shape[0]
        return self.compare_features([f[:n] for f in both], [f[n:] for f in both])


@functools.lru_cache(maxsize=4)
def _cached(path: str, device: str) -> LPIPS:
    return LPIPS(load_backbone(path)).to(device)


def load_lpips(backbone: str | os.PathLike | None = None, device: str = "cpu") -> LPIPS:
    """The LPIPS model (cached per backbone file and device); WeightsError with the hint when
    no backbone is found."""
    path = find_backbone(backbone)
    if path is None:
        raise WeightsError(backbone_hint())
    return _cached(str(path.resolve()), str(torch.device(device)))


def to_tensor(image: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """An 8-bit H×W×3 (or gray) image → a 1×3×H×W float32 tensor in [0, 1]."""
    image = to_8bit(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return tensor.permute(2, 0, 1).unsqueeze(0).float() / 255.0


@torch.inference_mode()
def lpips(
    pred: np.ndarray,
    gt: np.ndarray,
    backbone: str | os.PathLike | None = None,
    device: str = "cpu",
) -> float:
    """LPIPS (v0.1, AlexNet) of two 8-bit images of equal shape; lower is closer.

    Raises WeightsError naming where to put the AlexNet weights when none are found.
    """
    model = load_lpips(backbone, device)
    a, b = to_tensor(pred, device), to_tensor(gt, device)
    if a.shape != b.shape:
        raise InputError(f"prediction and ground truth differ in shape: {pred.shape} vs {gt.shape}")
    return float(model(a, b)[0])
