"""``python -m reblur_deploy.demo`` (what ``make demo`` runs): deblur the bundled samples.

Writes, into ``--out``: ``<image>_deblurred.png`` and ``<image>_side_by_side.png`` (input |
output, or input | output without TTA | with TTA) for the sample image, and, with ``--clip``,
``<clip>_side_by_side.mp4``. Uses the bundled model for the device with ``--tta`` steps of
test-time adaptation (5 by default: the demo shows what TTA does); when this release ships no
model, it runs the paper's U-Net with untrained weights (an untrained network returns its
input) and says so loudly.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from .cli.common import (
    console_script,
    device_option,
    one_line_errors,
    tta_steps_option,
    weights_option,
)
from .device import resolve_device
from .errors import ReblurError, WeightsError
from .io import read_image, write_image
from .losses import blur_score
from .metrics import niqe
from .models import build
from .pipeline import Deblurrer, default_weights
from .progress import progress_bar
from .runner import Job, RunOptions, count_frames, run_jobs

SAMPLE = Path(__file__).parent / "assets" / "samples" / "gopro_blur_00_crop.png"
BANNER = """
################################################################################
##  UNTRAINED WEIGHTS: this release ships no trained model for {device} ({name}).
##  The demo runs the paper's U-Net with untrained weights, which returns its
##  input unchanged: the output below is NOT deblurred. Train weights with
##  `python -m train.main` and pass them with --weights.
################################################################################
"""


def _deblurrer(weights: str | None, device, tta_steps: int) -> Deblurrer:
    try:
        return Deblurrer(weights or default_weights(device), device=device, tta_steps=tta_steps)
    except WeightsError:
        if weights:  # the user named weights: their error is the answer
            raise
        click.secho(
            BANNER.format(device=device.type, name=default_weights(device)), fg="red", err=True
        )
        modules = {"deblur": build("unet"), "reblur": build("reblur")}
        return Deblurrer(modules, device=device, tta_steps=tta_steps)


@console_script("python -m reblur_deploy.demo")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False),
    default=str(SAMPLE),
    show_default=True,
    help="Image to deblur.",
)
@click.option(
    "--clip",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A short video to deblur too (written input | output).",
)
@weights_option()
@tta_steps_option(default=5)  # 5, not 0 as elsewhere: the demo is there to show TTA
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo_output",
    show_default=True,
    help="Folder for the results (files in it are replaced).",
)
@device_option
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
@one_line_errors
def main(image, clip, weights, tta_steps, out_dir, device, verbose) -> None:  # fmt: skip
    """Deblur the sample image (and clip) and write the results and input | output views."""
    dev = resolve_device(device)
    deblurrer = _deblurrer(weights, dev, tta_steps)
    name = weights or default_weights(dev)
    click.echo(f"model: {name} on {dev}, TTA {tta_steps} step(s)")
    blurry = read_image(image)
    start = time.perf_counter()
    sharp = deblurrer(blurry)
    seconds = time.perf_counter() - start
    # With TTA, the output without it too: the side-by-side and the scores show what TTA adds.
    panels = [blurry, _deblurrer(weights, dev, 0)(blurry), sharp] if tta_steps else [blurry, sharp]
    out = Path(out_dir)
    stem = Path(image).stem
    write_image(out / f"{stem}_deblurred.png", sharp, overwrite=True)
    both = write_image(out / f"{stem}_side_by_side.png", np.hstack(panels), overwrite=True)
    h, w = blurry.shape[:2]
    # Two no-reference figures, lower = sharper: NIQE (natural-image statistics) and the blur
    # score under the model's own MR, which is only as good as that MR (docs/TTA.md).
    scores = ", NIQE " + " → ".join(f"{niqe(x):.3f}" for x in panels)
    if deblurrer.reblur is not None:
        values = [blur_score(x, deblurrer.reblur) for x in panels]
        scores += ", blur score " + " → ".join(f"{v:.3e}" for v in values)
    scores += " (input → deblurred → TTA)" if tta_steps else " (input → deblurred)"
    click.echo(f"image: {w}×{h} in {seconds:.2f} s{scores} → {both}")
    if clip:
        target = out / f"{Path(clip).stem}_side_by_side.mp4"
        job = Job("video", [Path(clip)], target)
        options = RunOptions(overwrite=True, side_by_side=True)
        with progress_bar(count_frames(job, options)) as bar:
            summary = run_jobs(deblurrer, [job], options, bar.update, lambda m: bar.write(m))
        if summary.failed:
            raise ReblurError(summary.failed[0][1])
        click.echo(f"clip: {summary.frames} frames in {summary.seconds:.1f} s → {target}")


if __name__ == "__main__":
    main()
