"""`reblur-eval`: LPIPS, NIQE, PSNR, SSIM and blur score as the paper measures them."""

from __future__ import annotations

import click

from ..errors import ConfigError
from . import common  # the options every command shares

EPILOG = """\b
Examples:
  reblur-eval --pred results/ --gt GOPRO/test_sharp/
  reblur-eval --weights my.safetensors --data paired:GOPRO_Large/test --tta-sweep 0,5,10 \\
              --out table.csv --out table.json --plot pd.png
  reblur-eval --weights unet-lite --data paired:GOPRO_Large/test --tta 5   # one row: TTA 5
  reblur-eval --weights my.safetensors --data images:real_blur_photos/

\b
Matching (--pred/--gt): by path relative to each folder: the same name under --gt, else the
name with every 'blur' replaced by 'sharp' (blur_00.png <-> sharp_00.png, 461_blur.png <->
461_sharp.png). A file without its partner, on either side, is an error naming it.
paired:DIR is DIR/blur + DIR/sharp, or DIR/<sequence>/blur + DIR/<sequence>/sharp.
"""


class _StepsOrOldSweep(click.IntRange):
    """--tta N (steps, as in every command); for one release a value with a comma is still
    the old --tta LIST, now --tta-sweep LIST, returned as that text."""

    def __init__(self):
        super().__init__(min=0)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "," in value:
            common.warn_deprecated("--tta LIST", f"--tta-sweep {value}")
            return value
        return super().convert(value, param, ctx)


def _sweep(tta_steps: int | str, tta_sweep: str | None) -> str | tuple[int, ...]:
    """The TTA steps of the rows: those of --tta-sweep, else the one row of --tta N (or the old
    --tta LIST, which _StepsOrOldSweep passes on as its text)."""
    if isinstance(tta_steps, str):
        if tta_sweep is not None:
            raise ConfigError("give --tta-sweep LIST only (--tta LIST is its old spelling)")
        return tta_steps
    if tta_sweep is not None and tta_steps:
        raise ConfigError("give --tta N (one row) or --tta-sweep LIST (a row each), not both")
    return tta_sweep or (tta_steps,)


@common.console_script("reblur-eval", epilog=EPILOG)
@click.option("--pred", type=click.Path(exists=True, file_okay=False), help="Images to measure.")
@click.option("--gt", type=click.Path(exists=True, file_okay=False), help="Their ground truth.")
@common.weights_option(default=None)
@click.option("--data", help="paired:DIR (blurry + sharp) or images:DIR (no ground truth).")
@common.tta_steps_option(type=_StepsOrOldSweep())
@click.option(
    "--tta-sweep",
    default=None,
    help="Comma-separated numbers of TTA steps, a row each (e.g. 0,5,10: no TTA, then 5 and 10 "
    "steps); instead of --tta N, which is the one row N.",
)
@common.tile_options
@common.device_option
@common.dtype_option()
@click.option(
    "--lpips-backbone",
    type=click.Path(dir_okay=False),
    help="torchvision's ImageNet AlexNet weights (alexnet-owt-7be5be79.pth) for LPIPS "
    "[default: $REBLUR_LPIPS_BACKBONE, else the torch hub cache; n/a without them].",
)
@click.option("--no-lpips", is_flag=True, help="Skip LPIPS.")
@click.option(
    "--jobs",
    type=int,
    default=None,
    help="Processes for the CPU metrics [default: 1 on ≤ 2 cores, else cores − 1 up to 8].",
)
@click.option(
    "--out",
    "outs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Also write the table to a .csv, .json (with per-image values) or .md file; repeatable.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="PSNR vs NIQE/LPIPS across TTA steps as an image (needs matplotlib: the plot extra).",
)
@click.option("--per-image", is_flag=True, help="Also print one line per image.")
@click.option(
    "--sequence",
    is_flag=True,
    help="The images are one video's frames in name order: run them in order (for "
    "--tta-carry) and add a flicker column (temporal stability).",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
@common.tta_options()
@common.one_line_errors
def main(pred, gt, weights, data, tta_steps, tta_sweep, tile, tile_overlap, device, dtype,
         lpips_backbone, no_lpips, jobs, outs, plot, per_image, sequence, no_progress, verbose,
         **tta_opts) -> None:  # fmt: skip
    """Measure deblurring quality as the paper does: LPIPS, NIQE, PSNR, SSIM, blur score.

    Either existing images (--pred, with --gt for the full-reference metrics; --weights then
    only supplies the reblurring module of the blur score), or the model of --weights run on
    --data: with --tta N steps (one row, the model as reblur-run --tta N runs it), or with each
    number of steps of --tta-sweep (a row each, like the paper's Table G). The table goes to
    stdout as Markdown; notes on anything n/a go to stderr.
    """
    from .. import eval as ev  # imported here so that --help stays fast

    sweep = _check_options(ev, pred, gt, weights, data, tta_steps, tta_sweep, tile, tile_overlap,
                           sequence, outs, plot)  # fmt: skip
    measuring = {"device": device, "lpips": not no_lpips, "lpips_backbone": lpips_backbone,
                 "jobs": jobs, "progress": not no_progress}  # fmt: skip
    if pred:
        report = ev.evaluate_folders(pred, gt, weights=weights, **measuring)
    elif data and weights:
        report = ev.evaluate_model(
            weights,
            data,
            tta_sweep=sweep,
            tta_config=common.tta_config(1, tta_opts),  # every row's options but the steps
            sequence=sequence,
            dtype=dtype,
            tile=tile,
            tile_overlap=tile_overlap,
            **measuring,
        )
    elif data:  # no model: measure the inputs themselves
        report = ev.evaluate_folders(pairs=ev.parse_data(data), setting="input", **measuring)
    else:
        raise ConfigError("nothing to evaluate: give --pred DIR [--gt DIR] or --data KIND:DIR")
    _write(ev, report, per_image, outs, plot)


def _check_options(ev, pred, gt, weights, data, tta_steps, tta_sweep, tile, tile_overlap,
                   sequence, outs, plot) -> str | tuple[int, ...]:  # fmt: skip
    """Refuse options that do not go together, or outputs that cannot be written, before any
    work; the rows' TTA steps (see ``_sweep``)."""
    if pred and data:
        raise ConfigError("give either --pred (existing images) or --data (run a model), not both")
    if gt and not pred:
        raise ConfigError("--gt goes with --pred")
    sweep = _sweep(tta_steps, tta_sweep)
    runs_model = (sweep, tile, tile_overlap, sequence) != ((0,), None, None, False)
    if runs_model and not (weights and data):
        raise ConfigError("--tta, --tta-sweep, --tile and --sequence run the model: they need "
                          "--weights and --data")  # fmt: skip
    for out in outs:
        ev.check_report_path(out)
    if plot:
        ev.check_plot_available()
        # PSNR is the plot's y axis: refuse a run without ground truth
        if (pred and not gt) or (data and data.partition(":")[0] == "images"):
            raise ConfigError("--plot needs ground truth (PSNR): use --gt or --data paired:DIR")
    return sweep


def _write(ev, report, per_image: bool, outs, plot) -> None:
    """The table (and per-image lines) to stdout, notes to stderr, then the report files."""
    click.echo(report.markdown(), nl=False)
    if per_image:
        click.echo()
        click.echo(report.per_image_markdown(), nl=False)
    for note in report.notes:
        click.echo(note, err=True)
    for out in outs:
        click.echo(f"wrote {report.write(out)}", err=True)
    if plot:
        click.echo(f"wrote {ev.plot_report(report, plot)}", err=True)


if __name__ == "__main__":
    main()
