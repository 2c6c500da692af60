"""What every console script shares: one-line errors."""

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
