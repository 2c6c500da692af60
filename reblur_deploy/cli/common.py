"""What every console script shares: -h and --version, one-line errors, a progress display fit
for a terminal and for a log, and the options several commands take (weights, device, dtype,
backend, tiling, TTA), each defined once here so that a name means the same thing, with the
same help, in every command."""

from __future__ import annotations

import functools
import math
import sys
import warnings

import click
from tqdm import tqdm

from .._version import __version__
from ..errors import ConfigError, ReblurError
from ..tta import TTAConfig
from ..weights import BUNDLED

_ALIASES = "reblur_deploy.aliases"  # ctx.meta key: the values given under deprecated spellings


class _Command(click.Command):
    """Usage errors (a bad option value, a missing argument) end in ``error: ...`` like every
    other message of the tools, not click's ``Error: ...``."""

    def invoke(self, ctx):
        # A deprecated spelling (deprecated_alias) fills its new option's parameter here, once
        # click has parsed everything (click < 8.3 lets a default overwrite a shared name).
        for dest, (old, value) in ctx.meta.pop(_ALIASES, {}).items():
            if ctx.get_parameter_source(dest) is click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"{old} is the old spelling of --{dest}: give one", ctx)
            ctx.params[dest] = value
        return super().invoke(ctx)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            return super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            if e.ctx is not None:
                click.echo(
                    f"{e.ctx.get_usage()}\nTry '{e.ctx.command_path} -h' for help.", err=True
                )
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)


def console_script(name: str, **kwargs):
    """``click.command`` for a console script: ``-h`` as well as ``--help``, and ``--version``."""

    def decorate(fn):
        fn = click.version_option(__version__, "--version", prog_name=name)(fn)
        return click.command(name=name, cls=_Command,
                             context_settings={"help_option_names": ["-h", "--help"]},
                             **kwargs)(fn)  # fmt: skip

    return decorate


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    tqdm.write(f"warning: {message}", file=sys.stderr)  # above a progress bar, not inside it


def one_line_errors(fn):
    """Turn library errors into one line on stderr and exit code 1 (traceback with --verbose)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                if not kwargs.get("verbose"):  # one line each, without file and source line
                    warnings.showwarning = _one_line_warning
                return fn(*args, **kwargs)
        except ReblurError as e:
            if kwargs.get("verbose"):
                raise
            click.echo(f"error: {e}", err=True)  # the prefix of every message of the tools
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def warn_deprecated(old: str, new: str) -> None:
    """The one-line notice of a spelling that goes away in the next release."""
    click.echo(f"warning: {old} is deprecated; use {new}", err=True)


def deprecated_alias(old: str, new: str, dest: str, value=None):
    """A hidden old spelling of an option, kept for one release: it warns and gives its value
    (``value`` for a flag, else the one given) to the new option's parameter ``dest``."""

    def forward(ctx, param, given):
        if given is None or given is False:  # not given
            return
        warn_deprecated(old, new)
        ctx.meta.setdefault(_ALIASES, {})[dest] = (old, given if value is None else value)

    name = "deprecated_" + old.lstrip("-").replace("-", "_")
    return click.option(old, name, hidden=True, expose_value=False, is_flag=value is not None,
                        callback=forward)  # fmt: skip


class FiniteFloat(click.FloatRange):
    """A float option that refuses nan and inf (FloatRange lets nan through every bound)."""

    name = "float"

    def convert(self, value, param, ctx):
        number = value if isinstance(value, float) else click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)

# -------------------------------------------------------------------------- shared options

WEIGHTS_HELP = f"Weight file (.safetensors) or bundled model name ({', '.join(BUNDLED)})."
PER_DEVICE = "unet-reblur on a GPU, unet-lite on a CPU"
DTYPES = ("fp32", "fp16", "bf16")
BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt", "auto")


def _help(text: str, default: str | None) -> str:
    """``text``, then a default that click cannot show itself (one said in words)."""
    return f"{text} [default: {default}]" if default else text


def weights_option(default: str | None = PER_DEVICE, required: bool = False):
    """--weights; ``default`` says in words what runs without it."""
    return click.option("--weights", required=required, default=None,
                        help=_help(WEIGHTS_HELP, None if required else default))  # fmt: skip


def device_option(fn):
    return click.option("--device", default="auto", show_default=True,
                        help="Device to run on: auto, cpu, cuda, cuda:1, ...")(fn)  # fmt: skip


def dtype_option(choices=DTYPES, default: str | None = None):
    """--dtype; ``default`` in words where it depends on something else, else fp32."""
    return click.option(
        "--dtype",
        type=click.Choice(choices),
        default=None if default else "fp32",
        show_default=not default,
        help=_help("Precision the network computes in (its inputs and outputs keep their type).",
                   default),
    )  # fmt: skip


def backend_option(default: str):
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default=None,
        help=_help("Inference engine (auto: the fastest available; TTA needs torch or compile).",
                   default),
    )  # fmt: skip


def tile_options(fn):
    """--tile and --tile-overlap: the Deblurrer's tiled inference."""
    fn = click.option(
        "--tile-overlap",
        type=click.IntRange(min=0),
        default=None,
        help=_help("Overlap of the tiles in pixels.", "64, at most a quarter of --tile"),
    )(fn)
    return click.option(
        "--tile",
        type=click.IntRange(min=1),
        default=None,
        help="Run the network on overlapping square tiles of this size (bounds memory; TTA "
        "then adapts on tiles of this size).",
    )(fn)


def tta_steps_option(default: int = 0, type=None):
    """--tta N: test-time adaptation steps (0 = none), the same in every command. ``type``:
    reblur-eval's, which still reads the old comma-separated list for one release."""
    return click.option(
        "--tta",
        "tta_steps",
        type=type or click.IntRange(min=0),
        default=default,
        show_default=True,
        help="Test-time adaptation steps per image (0 = none; the paper uses 5).",
    )


_TTA_DEFAULTS = TTAConfig()
# --tta-NAME → TTAConfig(NAME=...): (click type, help). --tta itself is tta_steps_option.
_TTA_OPTIONS = {
    "lr": (
        POSITIVE,
        "Adam learning rate of the TTA steps. [default: the rate the weights recommend "
        "(docs/MODEL_CARD.md), else the paper's 3e-6]",
    ),
    "scale": (
        click.IntRange(min=1),
        "MR judges the output shrunk by this factor (1 = full resolution, the paper's). "
        "[default: the frame's short side over 360, at least 2: 720p 2, 1080p 3, 4K 6]",
    ),
    "crop": (click.IntRange(min=1), "Adapt on random crops of this size, not the whole frame."),
    "crops": (click.IntRange(min=1), "Crops per step with --tta-crop (unless --tta-crop-area)."),
    "crop_area": (
        click.FloatRange(0, 1, min_open=True),
        "Share of the frame the crops of a step cover (sets their number per frame, 1 to 8; "
        "the video mode: 0.21).",
    ),
    "tol": (NON_NEGATIVE, "Stop early when a step improves the loss by less than this fraction."),
    "carry": (click.IntRange(min=0), "Video: keep the adapted weights, this many steps a frame."),
    "scene_cut": (NON_NEGATIVE, "Video: colour-histogram distance that resets carried weights."),
    "interval": (
        click.IntRange(min=1),
        "Video: adapt every N-th carried frame; those between run on the carried weights.",
    ),
    "joint": (bool, "Adapt once per batch instead of once per image."),
    "seed": (int, "Seed of the random crops."),
    "compile": (bool, "Run each step as a torch.compile graph (first frame compiles)."),
    "fused": (bool, "MR's ResBlocks through the fused Triton kernel (CUDA)."),
    "histmatch": (
        click.Choice(["exact", "fast"]),
        "Final histogram matching: binned, within 0.5/255 of exact (fast), or exact.",
    ),
    "match_carried": (
        bool,
        "Video: match each carried frame to its own L0 (a whole-frame pass with crops). "
        "[default: on, off in the video mode]",
    ),
}


def tta_options(*names: str):
    """The --tta-NAME options of the TTAConfig fields ``names`` (all of them when none are
    named); their defaults are TTAConfig's."""

    def decorate(fn):
        for name in reversed(names or tuple(_TTA_OPTIONS)):
            kind, text = _TTA_OPTIONS[name]
            flag = "--tta-" + name.replace("_", "-")
            default = getattr(_TTA_DEFAULTS, name)
            if kind is bool and default is None:  # unset: the mode decides
                off = "--tta-no-" + name.replace("_", "-")
                fn = click.option(f"{flag}/{off}", f"tta_{name}", default=None, help=text)(fn)
            elif kind is bool:
                fn = click.option(flag, f"tta_{name}", is_flag=True, default=False, help=text)(fn)
            else:
                fn = click.option(flag, f"tta_{name}", type=kind, default=default, help=text,
                                  show_default=default is not None)(fn)  # fmt: skip
        return fn

    return decorate


def tta_config(steps: int, options: dict) -> TTAConfig | None:
    """The TTAConfig of ``--tta STEPS`` and the --tta-NAME options (None: no TTA)."""
    fields = {name: options[f"tta_{name}"] for name in _TTA_OPTIONS}
    if not steps and fields["carry"] is None:
        changed = [n for n, v in fields.items() if v != getattr(_TTA_DEFAULTS, n)]
        if changed:
            raise ConfigError(f"--tta-{changed[0].replace('_', '-')} needs --tta N")
        return None
    return TTAConfig(steps=steps, **fields)
