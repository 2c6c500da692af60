"""``python -m train.main``: train MD and MR (one process, or one per GPU under torchrun).

Options come from the defaults, then ``--config FILE`` (JSON or TOML), then the command line;
with ``--resume`` the configuration saved in the checkpoint replaces the defaults, so the run
continues exactly as it was started. ``python -m train.main --help`` lists every option.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading

from reblur_deploy.errors import ReblurError

from .config import TrainConfig, load_file, parse_args, resolve


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def configure(argv: list[str] | None = None) -> TrainConfig:
    """The command line (and config file, and checkpoint) → the run's configuration."""
    from . import checkpoint

    cli, config_file, _ = parse_args(argv)
    file_values = load_file(config_file) if config_file else {}
    resume = cli.get("resume", file_values.get("resume"))
    if not resume:
        return resolve(cli, file_values)
    out = cli.get("out", file_values.get("out", TrainConfig.out))
    path = checkpoint.find_checkpoint(resume, out)
    base = checkpoint.read_state(path)["config"]
    config = resolve({**cli, "resume": str(path)}, file_values, base)
    saved = TrainConfig.from_dict(base, str(path)).to_dict()
    changed = [
        key
        for key, value in config.to_dict().items()
        if key not in TrainConfig.HARMLESS and saved.get(key) != value
    ]
    if changed:
        _say(
            f"warning: resuming {path} with changed options ({', '.join(changed)}): "
            "the result will differ from an uninterrupted run"
        )
    return config


class Terminated(Exception):
    """SIGTERM (a scheduler, ``kill``): stop like Ctrl-C, with a message instead of silence."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        config = configure(argv)
        from .loop import train

        command = shlex.join(["python", "-m", "train.main", *argv])
        result = train(config, command=command)
    except ReblurError as e:
        if verbose:
            raise
        _say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted; resume from the last checkpoint with --resume")
        return 130
    except Terminated:
        _say("terminated (SIGTERM); resume from the last checkpoint with --resume")
        return 128 + signal.SIGTERM
    if result.started_at >= result.iterations:
        _say(
            f"{config.out} has finished all {result.iterations} iterations: nothing to do "
            f"(--iters extends it and moves the schedule)\nweights: {result.weights}"
        )
        return 0
    if result.stopped_at is not None:
        _say(
            f"stopped at iteration {result.stopped_at} of {result.iterations}; continue with "
            f"--resume --out {config.out}\nweights: {result.weights}"
        )
        return 0
    metrics = result.metrics
    figures = ""
    if metrics:
        figures = f", validation PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}"
    _say(
        f"trained {result.iterations} iterations in {result.seconds:.0f} s{figures}\n"
        f"weights: {result.weights}" + (f"\nbest:    {result.best}" if result.best else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
