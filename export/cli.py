"""`reblur-export`: freeze a deblurring network to ONNX, TensorRT, Torch-TensorRT, TorchScript or
a torch.export ExportedProgram, and verify the file against PyTorch before keeping it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from reblur_deploy.backends import graphs
from reblur_deploy.cli.common import console_script, one_line_errors
from reblur_deploy.errors import ConfigError

TARGETS = ("onnx", "trt", "torch-trt", "torchscript", "exported-program")
FP16_DEFAULT = {"trt": True, "torch-trt": True}  # the others default to fp32
SHAPE_TARGETS = ("trt", "torch-trt")


def parse_shape(ctx, param, value: str | None):
    """'1x3x720x1280' (or with × or commas) → (1, 3, 720, 1280)."""
    if value is None:
        return None
    parts = [p for p in re.split(r"[x×,\s]+", value.strip().lower()) if p]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise click.BadParameter(f"expected N×3×H×W such as 1x3x720x1280, got {value!r}")
    return tuple(int(p) for p in parts)


@console_script("reblur-export")
@click.option("--to", "target", type=click.Choice(TARGETS), required=True, help="Format to write.")
@click.option("--weights", required=True, help="Weight file (.safetensors) or bundled model name.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option(
    "--module",
    "role",
    type=click.Choice(["deblur", "reblur"]),
    default="deblur",
    show_default=True,
    help="Which network of the weight file to export (reblur: the reblurring module MR).",
)
@click.option(
    "--fp16/--fp32",
    default=None,
    help="Precision inside the model; inputs and outputs stay float32 either way. "
    "Default: fp16 for trt and torch-trt, fp32 for the others (which offer fp32 only, "
    "except onnx).",
)
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
    fp16: bool | None,
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
    fp16 = FP16_DEFAULT.get(target, False) if fp16 is None else fp16
    shapes = (min_shape, opt_shape, max_shape)
    _check_options(target, fp16, opset, simplify, shapes, timing_cache)
    if Path(out).exists() and not overwrite:  # before minutes of export and verification
        raise ConfigError(f"{out} exists; refusing to overwrite it (use --overwrite)")
    profile = shapes if any(shapes) else None

    if target == "onnx":
        from .onnx import export_onnx

        kwargs = {"fp16": fp16, "simplify": simplify}
        opset = opset or graphs.DEFAULT_OPSET
        result = export_onnx(weights, out, role=role, opset=opset, log=_log, **kwargs)
    elif target == "trt":
        from .tensorrt import export_tensorrt

        result = export_tensorrt(
            weights, out, role=role, fp16=fp16, profile=profile, timing_cache=timing_cache, log=_log
        )
    elif target == "torch-trt":
        from .torch_trt import export_torch_trt

        result = export_torch_trt(
            weights, out, role=role, fp16=fp16, profile=profile, timing_cache=timing_cache, log=_log
        )
    elif target == "torchscript":
        from .torchscript import export_torchscript

        result = export_torchscript(weights, out, role=role)
    else:
        from .torchscript import export_exported_program

        result = export_exported_program(weights, out, role=role)

    click.echo(f"parity with PyTorch (tolerance {result.tolerance:.0e}):")
    for check in result.checks:
        click.echo(f"  {check}")
    click.echo(result.summary())


def _log(message: str) -> None:
    click.echo(message, err=True)


def _check_options(target, fp16, opset, simplify, shapes, timing_cache) -> None:
    """Refuse options that do not apply to the target (rather than ignoring them)."""
    if fp16 and target in ("torchscript", "exported-program"):
        raise ConfigError(f"--fp16 applies to onnx, trt and torch-trt, not {target}")
    if target != "onnx" and (opset is not None or simplify is not None):
        raise ConfigError("--opset and --simplify apply to --to onnx only")
    if target not in SHAPE_TARGETS and (any(shapes) or timing_cache):
        raise ConfigError("--min/opt/max-shape and --timing-cache apply to trt and torch-trt only")
