"""`reblur-eval`: LPIPS, NIQE, PSNR, SSIM and blur score as the paper measures them."""

from __future__ import annotations

import click

from ..errors import ConfigError
from .common import console_script, one_line_errors, tta_config, tta_options

EPILOG = """\b
Examples:
  reblur-eval --pred results/ --gt GOPRO/test_sharp/
  reblur-eval --weights my.safetensors --data paired:GOPRO_Large/test --tta 0,5,10 \\
              --out table.csv --out table.json --plot pd.png
  reblur-eval --weights my.safetensors --data images:real_blur_photos/

\b
Matching (--pred/--gt): by path relative to each folder: the same name under --gt, else the
name with every 'blur' replaced by 'sharp' (blur_00.png <-> sharp_00.png, 461_blur.png <->
461_sharp.png). A file without its partner, on either side, is an error naming it.
paired:DIR is DIR/blur + DIR/sharp, or DIR/<sequence>/blur + DIR/<sequence>/sharp.
"""


@console_script("reblur-eval", epilog=EPILOG)
@click.option("--pred", type=click.Path(exists=True, file_okay=False), help="Images to measure.")
@click.option("--gt", type=click.Path(exists=True, file_okay=False), help="Their ground truth.")
@click.option(
    "--weights",
    help="Weight file or bundled model name: runs the model (with --data); with --pred it "
    "only supplies the reblurring module for the blur score.",
)
@click.option("--data", help="paired:DIR (blurry + sharp) or images:DIR (no ground truth).")
@click.option(
    "--tta",
    default=None,
    help="Comma-separated numbers of test-time adaptation steps, one row each [default: 0].",
)
@click.option(
    "--tile",
    type=int,
    default=None,
    help="Run the model on overlapping square tiles of this size (bounds memory; TTA then "
    "adapts on tiles of this size).",
)
@click.option(
    "--tile-overlap",
    type=int,
    default=None,
    help="Overlap of the tiles in pixels [default: the Deblurrer's, 64].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option(
    "--dtype", default="fp32", show_default=True, help="Network precision: fp32, fp16, bf16."
)
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
@tta_options
# One long function on purpose: it maps the options above onto evaluate_folders or
# evaluate_model and the report files, in the order a reader of --help meets them.
@one_line_errors
def main(
    pred,
    gt,
    weights,
    data,
    tta,
    tile,
    tile_overlap,
    device,
    dtype,
    lpips_backbone,
    no_lpips,
    jobs,
    outs,
    plot,
    per_image,
    sequence,
    no_progress,
    verbose,
    **tta_opts,
) -> None:
    """Measure deblurring quality as the paper does: LPIPS, NIQE, PSNR, SSIM, blur score.

    Either existing images (--pred, with --gt for the full-reference metrics), or a model run
    with each number of TTA steps on --data (a row per setting, like the paper's Table G).
    The table goes to stdout as Markdown; notes on anything n/a go to stderr.
    """
    from .. import eval as ev  # imported here so that --help stays fast

    common = {
        "lpips": not no_lpips,
        "lpips_backbone": lpips_backbone,
        "jobs": jobs,
        "progress": not no_progress,
    }
    if pred and data:
        raise ConfigError("give either --pred (existing images) or --data (run a model), not both")
    if gt and not pred:
        raise ConfigError("--gt goes with --pred")
    if (tta, tile, tile_overlap, sequence) != (None, None, None, False) and not (weights and data):
        raise ConfigError(
            "--tta, --tile and --sequence run the model: they need --weights and --data"
        )
    for out in outs:  # refuse bad output names before the work, not after it
        ev.check_report_path(out)
    if plot:
        ev.check_plot_available()
        # PSNR is the plot's y axis: refuse a run without ground truth before the work
        if (pred and not gt) or (data and data.partition(":")[0] == "images"):
            raise ConfigError("--plot needs ground truth (PSNR): use --gt or --data paired:DIR")
    if pred:
        report = ev.evaluate_folders(pred, gt, weights=weights, device=device, **common)
    elif data and weights:
        report = ev.evaluate_model(
            weights,
            data,
            tta=tta or "0",
            tta_config=tta_config(1, tta_opts),  # every row's options; its steps are the row's
            sequence=sequence,
            device=device,
            dtype=dtype,
            tile=tile,
            tile_overlap=tile_overlap,
            **common,
        )
    elif data:  # no model: measure the inputs themselves
        pairs = ev.parse_data(data)
        report = ev.evaluate_folders(pairs=pairs, setting="input", device=device, **common)
    else:
        raise ConfigError("nothing to evaluate: give --pred DIR [--gt DIR] or --data KIND:DIR")
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
