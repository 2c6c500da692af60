"""Image arrays ↔ the float tensors the networks take: the one conversion every layer uses.

``array_to_tensor`` turns an H×W[×C] uint8 or uint16 array (gray, RGB or RGBA) into a 1×3×H×W
float32 tensor in [0, 1] and remembers its layout; ``tensor_to_array`` returns a result in
that same layout (dtype, channels, alpha carried over unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError


@dataclass
class _Layout:
    """How an array was given, so the output can be returned in the same form."""

    shape: tuple[int, ...]
    dtype: np.dtype
    alpha: np.ndarray | None = None


def array_to_tensor(image: np.ndarray) -> tuple[torch.Tensor, _Layout]:
    """An H×W[×C] uint8/uint16 array → a 1×3×H×W float32 tensor in [0, 1] and its layout."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a numpy array or a torch tensor, got {type(image).__name__}")
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    else:
        raise InputError(
            f"unsupported array dtype {image.dtype}; pass uint8 or uint16 images, "
            "or an N×3×H×W float tensor in [0, 1]"
        )
    layout = _Layout(image.shape, image.dtype)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(
            f"expected an H×W, H×W×1 (gray), H×W×3 (RGB) or H×W×4 (RGBA) image, "
            f"got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"empty image (shape {image.shape})")
    if image.shape[2] == 4:
        layout.alpha = image[..., 3].copy()
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    values = np.ascontiguousarray(rgb, dtype=np.float32)  # one float copy, scaled in place
    values /= scale
    tensor = torch.from_numpy(values)
    return tensor.permute(2, 0, 1).unsqueeze(0), layout


def tensor_to_array(tensor: torch.Tensor, layout: _Layout) -> np.ndarray:
    """The inverse of ``array_to_tensor`` for one 3×H×W output in [0, 1]."""
    scale = 255.0 if layout.dtype == np.uint8 else 65535.0
    rgb = tensor.detach().float().cpu().permute(1, 2, 0).numpy()
    if len(layout.shape) == 2 or layout.shape[2] == 1:  # grayscale in, grayscale out
        rgb = rgb.mean(axis=2, keepdims=True)
    scaled = np.clip(rgb, 0.0, 1.0)  # one float copy, then in place (large frames)
    scaled *= scale
    out = np.rint(scaled, out=scaled).astype(layout.dtype)
    if layout.alpha is not None:
        out = np.concatenate([out, layout.alpha[..., None]], axis=2)
    return out.reshape(layout.shape)


def swap_red_blue(image: np.ndarray) -> np.ndarray:
    """RGB(A) ↔ BGR(A); gray images are returned as they are."""
    if image.ndim == 3 and image.shape[2] in (3, 4):
        order = [2, 1, 0, 3][: image.shape[2]]
        return image[..., order]
    return image
