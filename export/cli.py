"""`reblur-export`: freeze a deblurring network to ONNX, TensorRT, Torch-TensorRT, TorchScript or
a torch.export ExportedProgram, and verify the file against PyTorch before keeping it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from reblur_deploy.atomic import check_writable
from reblur_deploy.backends import graphs
from reblur_deploy.cli.common import (
    console_script,
    deprecated_alias,
    dtype_option,
    one_line_errors,
    weights_option,
)
from reblur_deploy.errors import ConfigError

from .formats import TARGETS

TARGET_HELP = "Format to write: " + ", ".join(
    f"{t.name} ({t.suffix}{f'; extra {t.extra}' if t.extra else ''})" for t in TARGETS.values()
)


def parse_shape(ctx, param, value: str | None):
    """'1x3x720x1280' (or with × or commas) → (1, 3, 720, 1280)."""
    if value is None:
        return None
    parts = [p for p in re.split(r"[x×,\s]+", value.strip().lower()) if p]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise click.BadParameter(f"expected N×3×H×W such as 1x3x720x1280, got {value!r}")
    return tuple(int(p) for p in parts)


@console_script("reblur-export")
@click.option("--to", "target", type=click.Choice(tuple(TARGETS)), required=True, help=TARGET_HELP)
@weights_option(required=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option(
    "--module",
    "role",
    type=click.Choice(["deblur", "reblur"]),
    default="deblur",
    show_default=True,
    help="Which network of the weight file to export (reblur: the reblurring module MR).",
)
@dtype_option(("fp32", "fp16"), default="fp16 for trt and torch-trt, else fp32")
@deprecated_alias("--fp16", "--dtype fp16", "dtype", value="fp16")
@deprecated_alias("--fp32", "--dtype fp32", "dtype", value="fp32")
@click.option(
    "--opset", type=int, default=None, help=f"ONNX opset (≥ 17; default {graphs.DEFAULT_OPSET})."
)
@click.option(
    "--simplify/--no-simplify", default=None, help="onnxsim pass (default: when installed)."
)
@click.option("--min-shape", callback=parse_shape, help="TensorRT profile min [1x3x256x256].")
@click.option("--opt-shape", callback=parse_shape, help="TensorRT profile opt [1x3x720x1280].")
@click.option("--max-shape", callback=parse_shape, help="TensorRT profile max [4x3x1088x1920].")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="TensorRT timing cache, read and updated [~/.cache/reblur-deploy/tensorrt-timing.cache].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file (as reblur-run).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
@one_line_errors
def main(
    target: str,
    weights: str,
    out: str,
    role: str,
    dtype: str | None,
    opset: int | None,
    simplify: bool | None,
    min_shape,
    opt_shape,
    max_shape,
    timing_cache: str | None,
    overwrite: bool,
    verbose: bool,
) -> None:
    """Export a network of a weight file and check it against PyTorch on two input shapes.

    The file gets its final name only when the check passes (max |Δ| ≤ 1e-4 for fp32, ≤ 2e-2
    for fp16); otherwise the command exits non-zero and writes nothing.
    """
    form = TARGETS[target]
    fp16 = form.fp16_default if dtype is None else dtype == "fp16"
    shapes = (min_shape, opt_shape, max_shape)
    options = {
        "opset": opset,
        "simplify": simplify,
        "profile": shapes if any(shapes) else None,
        "timing_cache": timing_cache,
    }
    form.check(fp16, options)
    check_writable(out)  # these two before minutes of export and verification
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} exists; refusing to overwrite it (use --overwrite)")
    result = form.write(weights, out, role, fp16=fp16, log=_log, **options)

    click.echo(f"parity with PyTorch (tolerance {result.tolerance:.0e}):")
    for check in result.checks:
        click.echo(f"  {check}")
    click.echo(result.summary())


def _log(message: str) -> None:
    click.echo(message, err=True)
