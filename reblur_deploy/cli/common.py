"""What every console script shares: one-line errors and placeholders for later commands."""

from __future__ import annotations

import functools
import sys

import click

from ..errors import ReblurError


def one_line_errors(fn):
    """Turn library errors into one line on stderr and exit code 1 (traceback with --verbose)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReblurError as e:
            if kwargs.get("verbose"):
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def placeholder(name: str, what: str) -> click.Command:
    """A console script that exists but whose work is not in this release yet (exit code 2)."""

    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args):
        click.echo(f"{name}: {what} is not available in this release yet.", err=True)
        click.echo("For now use the Python API: from reblur_deploy import Deblurrer", err=True)
        sys.exit(2)

    command.help = f"{what} (not available in this release yet)."
    return command
