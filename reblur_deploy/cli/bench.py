"""`reblur-bench`: measure the kernels, TTA and inference on this machine (reblur_deploy.bench)."""

from __future__ import annotations

import json
import sys

import click

from ..atomic import write_bytes_atomic
from ..bench import SECTIONS, BenchConfig, parse_sizes, run, to_markdown
from ..errors import ConfigError
from .common import console_script, device_option, one_line_errors, tta_options, weights_option

EPILOG = """\b
Examples:
  reblur-bench --quick                          # small sizes, few repeats (minutes on a CPU)
  reblur-bench --only histmatch                 # 1280x720 histogram matching vs scikit-image
  reblur-bench --sizes 720p,1080p --json out.json --md out.md
  reblur-bench --append docs/BENCHMARKS.md      # keep this run's tables in the docs
  reblur-bench --only video --video clip.mp4    # video TTA: cost and quality per setting
  reblur-bench --only drift --drift REDS/027    # the video mode over a 1,000-frame shot

\b
Defaults: on a GPU sizes 256,720p,1080p and batches 1,4,8; on a CPU 256 only (one full-frame
720p TTA step takes about a minute there): pass --sizes to choose.
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"expected positive integers, got {text!r}")
    return values


def _clip_options(name: str, kind: click.Path, text: str, frames: tuple[int, int, str]):
    """--NAME, the clip of a section that runs on the user's frames, and --NAME-frames, how
    many of them it runs: ``frames`` is (the fewest it takes, the default, help)."""
    least, default, frames_text = frames

    def decorate(fn):
        fn = click.option(f"--{name}-frames", type=click.IntRange(min=least), default=default,
                          show_default=True, help=frames_text)(fn)  # fmt: skip
        return click.option(f"--{name}", type=kind, help=text)(fn)

    return decorate


@console_script("reblur-bench", epilog=EPILOG)
@click.option(
    "--quick", is_flag=True, help="Small sizes (256²), batches 1,2, 2 TTA steps, 2 repeats."
)
@device_option
@click.option(
    "--sizes", help="Frame sizes for TTA, MR and inference: 256, 512, 720p, 1080p or HxW."
)
@click.option("--batches", help="Inference batch sizes [default: 1,4,8].")
@click.option("--steps", type=int, help="TTA steps of the multi-step measurement [default: 5].")
@tta_options("lr")  # the video section's
@click.option(
    "--repeats", type=int, help="Timed repetitions per measurement (median) [default: 3]."
)
@click.option("--only", help=f"Comma-separated sections: {', '.join(SECTIONS)}.")
@click.option("--no-compile", is_flag=True, help="Skip the torch.compile variants.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON."
)
@click.option("--md", "md_path", type=click.Path(dir_okay=False), help="Write the tables.")
@click.option(
    "--append",
    "append_path",
    type=click.Path(dir_okay=False),
    help="Append the Markdown tables to this file (e.g. docs/BENCHMARKS.md).",
)
@weights_option(default="the paper's U-Net and MR, untrained")
@_clip_options(
    "video",
    click.Path(exists=True),
    "Clip (a video or a folder of frames) of the video-TTA section.",
    frames=(3, 8, "Frames of --video to run."),
)
@_clip_options(
    "drift",
    click.Path(exists=True, file_okay=False),
    "A sequence of frame pairs (DIR/blur, DIR/sharp) for the drift section.",
    frames=(2, 1000, "Frames of the shot played from --drift (forwards, backwards, ...)."),
)
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
@one_line_errors
def main(
    quick,
    device,
    sizes,
    batches,
    steps,
    tta_lr,
    repeats,
    only,
    no_compile,
    json_path,
    md_path,
    append_path,
    weights,
    video,
    video_frames,
    drift,
    drift_frames,
    verbose,
):
    """Benchmark histogram matching, MR's ResBlocks, TTA steps and inference backends, as ratios
    against baselines measured in the same run; prints Markdown tables. --weights: the model
    whose MD (and MR) the TTA and inference sections run; --tta-lr: the video section's."""
    options = {
        "device": device,
        "compile": not no_compile,
        "log": lambda m: click.echo(m, err=True),
        "weights": weights,
        "video": video,
        "video_frames": video_frames,
        "tta_lr": tta_lr,
        "drift": drift,
        "drift_frames": drift_frames,
    }
    if sizes:
        options["sizes"] = parse_sizes(sizes)
    if batches:
        options["batches"] = _ints(batches)
    if steps is not None:
        if steps < 2:
            raise ConfigError("--steps must be at least 2 (one step is always measured too)")
        options["steps"] = steps
    if repeats is not None:
        options["repeats"] = _ints(str(repeats))[0]
    if only:
        options["sections"] = tuple(s.strip() for s in only.split(",") if s.strip())
    config = BenchConfig.quick_config(**options) if quick else BenchConfig(**options)
    report = run(config)
    markdown = to_markdown(report)
    click.echo(markdown)
    if json_path:
        write_bytes_atomic(json_path, (json.dumps(report, indent=2, default=str) + "\n").encode())
    if md_path:
        write_bytes_atomic(md_path, markdown.encode())
    if append_path:
        with open(append_path, "a") as f:
            f.write("\n" + markdown)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
