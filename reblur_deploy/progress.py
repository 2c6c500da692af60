"""Progress on stderr: a bar that redraws itself on a terminal, plain lines in a pipe or log.

``reblur-run`` counts frames with it and ``python -m train.main`` iterations; a bar's carriage
returns would fill a log file with hundreds of updates per line.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def progress_bar(total: int | None, quiet: bool = False, unit: str = "frame", initial: int = 0):
    """A context manager; ``update(n)`` counts, ``write(message)`` prints above it,
    ``set_postfix(values)`` shows the latest figures (a training run's losses)."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, unit=unit, disable=quiet, dynamic_ncols=True,
                    file=sys.stderr, miniters=1, mininterval=0.2)  # fmt: skip
    return LogProgress(total, disable=quiet, unit=unit, initial=initial)


class LogProgress:
    """Progress for a log (stderr not a terminal): a plain line at most every ``every`` seconds
    with the count, rate, time left and the latest figures, and one at the end; messages are
    printed as they come (errors and warnings even when quiet)."""

    def __init__(self, total: int | None, disable: bool = False, every: float = 10.0,
                 unit: str = "frame", initial: int = 0):  # fmt: skip
        self.total, self.disable, self.every, self.unit = total, disable, every, unit
        self.done = self.initial = initial
        self.postfix = ""
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            if not self.disable:
                self.write(self.line(now - self.start))

    def line(self, seconds: float) -> str:
        rate = (self.done - self.initial) / seconds if seconds > 0 else 0.0
        text = f"{self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}(s)"
        text += f", {seconds:.0f} s, {rate:.2f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        return text + (f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, values: dict, refresh: bool = False) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def write(self, message: str, file=None) -> None:
        if not self.disable or message.startswith(("error", "warning")):
            print(message, file=sys.stderr, flush=True)

    def refresh(self) -> None:  # tqdm's interface: a line comes with the next update
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass
