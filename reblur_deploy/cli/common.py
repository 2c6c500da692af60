"""What every console script shares: -h and --version, and one-line errors."""

from __future__ import annotations

import functools
import sys
import warnings

import click
from tqdm import tqdm

from .._version import __version__
from ..errors import ConfigError, ReblurError
from ..tta import TTAConfig


class _Command(click.Command):
    """Usage errors (a bad option value, a missing argument) end in ``error: ...`` like every
    other message of the tools, not click's ``Error: ...``."""

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


_TTA_DEFAULTS = TTAConfig()
# --tta-NAME → TTAConfig(NAME=...): (click type, help). --tta itself (steps) is per command.
_TTA_OPTIONS = {
    "lr": (float, "Adam learning rate of the TTA steps."),
    "crop": (click.IntRange(min=1), "Adapt on random crops of this size, not the whole frame."),
    "crops": (click.IntRange(min=1), "Crops per step with --tta-crop."),
    "tol": (float, "Stop early when a step improves the loss by less than this fraction."),
    "carry": (click.IntRange(min=0), "Video: keep the adapted weights, this many steps a frame."),
    "scene_cut": (float, "Video: colour-histogram distance that resets carried weights."),
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


def tta_options(fn):
    """The --tta-NAME options of every TTAConfig field (their defaults are TTAConfig's)."""
    for name, (kind, text) in reversed(_TTA_OPTIONS.items()):
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


def tta_config(steps: int, options: dict) -> TTAConfig | None:
    """The TTAConfig of ``--tta STEPS`` and the --tta-NAME options (None: no TTA)."""
    fields = {name: options[f"tta_{name}"] for name in _TTA_OPTIONS}
    if not steps and fields["carry"] is None:
        changed = [n for n, v in fields.items() if v != getattr(_TTA_DEFAULTS, n)]
        if changed:
            raise ConfigError(f"--tta-{changed[0].replace('_', '-')} needs --tta N")
        return None
    return TTAConfig(steps=steps, **fields)
