"""``python -m reblur_deploy.demo`` (what ``make demo`` runs): deblur the bundled sample.

Writes ``<out>/<sample>_deblurred.png`` and ``<out>/<sample>_side_by_side.png`` (input | output).
Uses the bundled model for the device; when this release ships none, it runs the paper's U-Net
with untrained weights (an untrained network returns its input) and says so loudly.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from .cli.common import one_line_errors
from .errors import WeightsError
from .io import read_image, write_image
from .models import build
from .pipeline import Deblurrer, default_weights, resolve_device

SAMPLE = Path(__file__).parent / "assets" / "samples" / "gopro_blur_00_crop.png"
BANNER = """
################################################################################
##  UNTRAINED WEIGHTS: this release ships no trained model for {device} ({name}).
##  The demo runs the paper's U-Net with untrained weights, which returns its
##  input unchanged: the output below is NOT deblurred. Train weights with
##  `python -m train.main` and pass them with --weights.
################################################################################
"""


@click.command()
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False),
    default=str(SAMPLE),
    show_default=True,
    help="Image to deblur.",
)
@click.option("--weights", default=None, help="Weight file or bundled model name.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo_output",
    show_default=True,
    help="Folder for the results (files in it are replaced).",
)
@click.option("--device", default="auto", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
@one_line_errors
def main(image: str, weights: str | None, out_dir: str, device: str, verbose: bool) -> None:
    """Deblur a sample image and write the result and an input | output comparison."""
    dev = resolve_device(device)
    try:
        deblurrer = Deblurrer(weights or default_weights(dev), device=dev)
    except WeightsError:
        if weights:  # the user named weights: their error is the answer
            raise
        click.secho(BANNER.format(device=dev.type, name=default_weights(dev)), fg="red", err=True)
        deblurrer = Deblurrer({"deblur": build("unet"), "reblur": build("reblur")}, device=dev)
    blurry = read_image(image)
    start = time.perf_counter()
    sharp = deblurrer(blurry)
    seconds = time.perf_counter() - start
    stem = Path(image).stem
    out = Path(out_dir)
    result = write_image(out / f"{stem}_deblurred.png", sharp, overwrite=True)
    both = write_image(out / f"{stem}_side_by_side.png", np.hstack([blurry, sharp]), overwrite=True)
    h, w = blurry.shape[:2]
    click.echo(f"deblurred {image} ({w}×{h}) on {dev} in {seconds:.2f} s")
    click.echo(f"wrote {result} and {both}")


if __name__ == "__main__":
    main()
