"""Image files ↔ numpy arrays in RGB order (OpenCV underneath, which works in BGR).

Arrays keep the file's bit depth (uint8 or uint16) and channels: H×W gray, H×W×3 RGB or
H×W×4 RGBA. Writes go to a temporary file in the target folder and are renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode copes with any file name
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError(f"cannot decode {path}: not an image, or a corrupt one")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: {image.dtype} images are not supported (8- or 16-bit only)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def write_image(path: str | os.PathLike, image: np.ndarray, overwrite: bool = False) -> Path:
    """Write an RGB(A) or gray array; the format follows the file suffix."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; refusing to overwrite it (use --overwrite)")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            f"{path}: unsupported image suffix (use one of {', '.join(IMAGE_SUFFIXES)})"
        )
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise InputError(f"cannot encode a {image.dtype} {image.shape} image as {path.suffix}")
    write_bytes_atomic(path, encoded.tobytes())
    return path
