"""What every console script shares: -h and --version, and one-line errors."""

from __future__ import annotations

import functools
import sys
import warnings

import click
from tqdm import tqdm

from .._version import __version__
from ..errors import ReblurError


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
