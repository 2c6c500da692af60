"""`reblur-eval`: evaluation (PSNR, SSIM, NIQE, LPIPS)."""

from .common import placeholder

main = placeholder("reblur-eval", "evaluation (PSNR, SSIM, NIQE, LPIPS)")
