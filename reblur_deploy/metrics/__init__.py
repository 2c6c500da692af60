"""Image quality metrics as the paper measures them (see docs/EVAL.md).

Full-reference: ``psnr`` and ``ssim`` (higher is better), ``lpips`` (lower is better).
No-reference: ``niqe`` (lower is better). All take 8-bit H×W×3 RGB numpy arrays as
``reblur_deploy.io.read_image`` returns them (16-bit is reduced to 8 bits).
"""

from .distortion import psnr, ssim
from .lpips import lpips
from .niqe import niqe

__all__ = ["lpips", "niqe", "psnr", "ssim"]
