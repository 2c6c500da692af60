"""`reblur-run`: deblur images, folders, globs and videos from the command line."""

from __future__ import annotations

import os
import signal
import sys

import click

from ..backends.exported import bundled_source, exported_metadata, origin
from ..device import resolve_device
from ..errors import ConfigError
from ..io import VideoSettings
from ..pipeline import Deblurrer, default_weights
from ..progress import progress_bar
from ..runner import (
    RunOptions,
    count_frames,
    default_backend,
    plan_jobs,
    run_jobs,
    uses_video_mode,
)
from ..tta import TTAConfig
from .common import (
    POSITIVE,
    backend_option,
    console_script,
    device_option,
    dtype_option,
    one_line_errors,
    tile_options,
    tta_config,
    tta_options,
    tta_steps_option,
    weights_option,
)


def _shard(value: str | None) -> tuple[int, int]:
    """--shard I/N, else torchrun's RANK/WORLD_SIZE, else the whole job list."""
    if value is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes I/N (e.g. 0/4), got {value!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {value}: I must be in [0, N)")
    return index, count


def _device(value: str) -> str:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if value == "auto" and "LOCAL_RANK" in os.environ and resolve_device("auto").type == "cuda":
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return value


# The files from reblur-export that a backend runs: --NAME FILE → (the backend, the keyword of
# its backend options that takes the file, help).
_EXPORTED_FILES = {
    "onnx": (
        "onnxruntime",
        "model",
        "ONNX file for --backend onnxruntime (from reblur-export; else exported now).",
    ),
    "engine": (
        "tensorrt",
        "engine",
        "TensorRT engine for --backend tensorrt (from reblur-export).",
    ),
}


def _exported_file_options(fn):
    """--onnx and --engine (parameters onnx_file and engine_file)."""
    for name, (_, _, text) in reversed(_EXPORTED_FILES.items()):
        fn = click.option(f"--{name}", f"{name}_file", type=click.Path(exists=True, dir_okay=False),
                          default=None, help=text)(fn)  # fmt: skip
    return fn


# --NAME → VideoSettings.NAME, how videos are encoded: (click type, help); the defaults are
# VideoSettings' own (where None, the help says what is chosen).
_VIDEO_OPTIONS = {
    "codec": (str, "Video encoder [default: libx264 for mp4/mov/mkv]."),
    "crf": (
        click.IntRange(0, 51),
        "x264/x265 quality (18 ≈ visually lossless; lower = better, bigger).",
    ),
    "preset": (str, "x264/x265 speed preset."),
    "pix_fmt": (
        str,
        "Output pixel format, e.g. yuv420p10le [default: yuv420p, 10-bit for 10-bit input].",
    ),
}


def _video_options(fn):
    """--codec, --crf, --preset and --pix-fmt, with VideoSettings' defaults."""
    defaults = VideoSettings()
    for name, (kind, text) in reversed(_VIDEO_OPTIONS.items()):
        default = getattr(defaults, name)
        fn = click.option("--" + name.replace("_", "-"), type=kind, default=default, help=text,
                          show_default=default is not None)(fn)  # fmt: skip
    return fn


def _backend_options(backend: str, onnx_file: str | None, engine_file: str | None) -> dict:
    """The Deblurrer's backend options: the exported file given for the backend, if any."""
    given = {"onnx": onnx_file, "engine": engine_file}
    options = {}
    for name, (runner, keyword, _) in _EXPORTED_FILES.items():
        if given[name] and backend not in (runner, "auto"):
            raise ConfigError(f"--{name} goes with --backend {runner}")
        if given[name]:
            options[keyword] = given[name]
    return options


def _weights(weights, device, onnx_file, engine_file, say) -> str:
    """The weights to load, saying which model runs. With --onnx/--engine and no --weights:
    the bundled model the file was exported from (by its weights hash)."""
    exported = onnx_file or engine_file
    meta = exported_metadata(onnx_file, engine_file) if exported else {}
    if weights is None and exported:
        weights = bundled_source(meta)
        if weights is None and meta.get("weights_sha256"):
            raise ConfigError(
                f"{exported} was exported from {origin(meta)}, not from a bundled model; "
                "pass those weights with --weights"
            )
    if exported:
        say(f"running {exported}, exported from {origin(meta)}")
    if weights is None:
        weights = default_weights(device)
        say(f"using the bundled model {weights!r} (the default on {device.type})")
    return weights


def _terminate(signum, frame):
    raise KeyboardInterrupt  # same clean-up as Ctrl-C: temporary files removed


@console_script("reblur-run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file, or folder (end with / to force one).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (never inputs).")
@click.option(
    "--skip-existing", is_flag=True, help="Leave inputs whose output exists (resume a batch)."
)
@weights_option()
@device_option
@dtype_option()
@backend_option(
    "compile for videos of 1,500 720p frames' worth of pixels or more on a CPU without TTA, "
    "else auto"
)
@_exported_file_options
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@tta_steps_option()
@tta_options()
@click.option(
    "--tta-video/--tta-per-frame",
    default=None,
    help="TTA of videos: the video mode (carry-over, one step a frame on 256² crops covering "
    "21 % of the frame, 1.2–2× plain inference) or per-frame Algorithm A (--tta steps on "
    "every frame). "
    "[default: the video mode for videos unless --tta-carry or --tta-crop is given]",
)
@tile_options
@click.option(
    "--max-memory",
    default=None,
    help="Memory a frame may use, e.g. 2G; larger frames are tiled [default: what is free].",
)
@click.option("--side-by-side", is_flag=True, help="Write input | output next to each other.")
@click.option("--start", type=click.IntRange(min=0), default=0, help="First video frame.")
@click.option("--end", type=click.IntRange(min=1), default=None, help="Video frame to stop before.")
@click.option(
    "--allow-truncated",
    is_flag=True,
    help="Of a truncated or corrupt video, write the frames before the damage (with a warning) "
    "instead of failing.",
)
@click.option(
    "--fps",
    type=POSITIVE,
    default=30.0,
    show_default=True,
    help="Frame rate of a video made from a folder of frames.",
)
@_video_options
@click.option(
    "--quality",
    type=click.IntRange(1, 100),
    default=95,
    show_default=True,
    help="JPEG and WebP quality of image outputs.",
)
@click.option("--shard", default=None, help="I/N: process every N-th input starting at I.")
@click.option(
    "--ray",
    "ray_address",
    metavar="[ADDRESS]",
    is_flag=False,
    flag_value="",
    default=None,
    help="Run on a Ray cluster: the one at ADDRESS (e.g. ray://head:10001 or auto), or without "
    "one a local cluster started for the run (pip install 'reblur-deploy[ray]').",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Ray actors, each holding one model [default: one per CPU of the cluster].",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file with per-frame blur scores and seconds.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
@one_line_errors
def main(inputs, output, overwrite, skip_existing, weights, device, dtype, backend, onnx_file,
         engine_file, batch_size, tta_steps, tta_video, tile, tile_overlap, max_memory,
         side_by_side, start, end, allow_truncated, fps, codec, crf, preset, quality,
         pix_fmt, shard, ray_address, ray_workers, report, quiet, verbose, **tta):  # fmt: skip
    """Deblur images, folders, globs and videos.

    \b
    reblur-run photo.jpg                      → photo_deblurred.jpg
    reblur-run shots/ -o sharp/               → sharp/<same names>
    reblur-run 'shots/*.png' --tta 5          → *_deblurred.png, adapted per image
    reblur-run clip.mp4 --tta 5 -o out.mp4    → H.264, audio copied, same time stamps;
                                                TTA in the video mode (--tta-video)
    reblur-run frames/ --fps 30 -o clip.mp4   → a video from a folder of frames
    """
    _stop_cleanly_on_signals()
    if end is not None and end <= start:
        raise ConfigError(f"--end {end} must be after --start {start}")
    options = RunOptions(
        output=output, overwrite=overwrite, side_by_side=side_by_side, start=start, end=end,
        allow_truncated=allow_truncated,
        fps=fps, video=VideoSettings(codec, crf, preset, pix_fmt), quality=quality,
        skip_existing=skip_existing, shard=_shard(shard), report=report, tta_video=tta_video,
    )  # fmt: skip
    jobs = plan_jobs(inputs, options)
    if not jobs:  # --skip-existing found every output
        click.echo("nothing to do: every output exists (--skip-existing)", err=True)
        return
    device_name = _device(device)  # as given: each Ray worker resolves its own
    device = resolve_device(device_name)
    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    tta_setting = tta_config(tta_steps, tta)
    if tta_video and tta_setting is None:
        raise ConfigError("--tta-video needs --tta N")
    weights = _weights(weights, device, onnx_file, engine_file, say)
    counts = [count_frames(job, options) for job in jobs]
    backend = backend or _default_backend(device, tta_setting, jobs, counts, say)
    settings = dict(
        weights=weights, dtype=dtype, tta=tta_setting, batch_size=batch_size, tile=tile,
        tile_overlap=tile_overlap, max_memory=max_memory, backend=backend,
        backend_options=_backend_options(backend, onnx_file, engine_file),
    )  # fmt: skip
    if ray_address is not None:
        settings["device"] = device_name
        _run_on_ray(jobs, options, settings, ray_address, ray_workers, counts, output, quiet)
        return
    deblurrer = Deblurrer(device=device, **settings)
    if tta_video is None and any(uses_video_mode(deblurrer, job, options) for job in jobs):
        say("TTA of videos: the video mode (--tta-per-frame for Algorithm A on every frame)")
    with progress_bar(None if None in counts else sum(counts), quiet) as bar:
        summary = run_jobs(
            deblurrer, jobs, options, bar.update, lambda m: bar.write(m, file=sys.stderr)
        )
    _finish(summary, jobs, output, quiet, deblurrer.backend.describe())


def _run_on_ray(jobs, options, settings: dict, address: str, workers, counts, output,
                quiet: bool) -> None:  # fmt: skip
    """--ray: the planned jobs on a Ray cluster (reblur_deploy.cluster), one progress bar."""
    from ..cluster import run_on_ray
    from ..weights import resolve

    resolve(settings["weights"])  # a bad name fails here, not on every worker
    with progress_bar(None if None in counts else sum(counts), quiet) as bar:
        summary = run_on_ray(jobs, options, settings, address or None, workers, bar.update,
                             lambda m: bar.write(m, file=sys.stderr))  # fmt: skip
    _finish(summary, jobs, output, quiet, "on Ray")


def _stop_cleanly_on_signals() -> None:
    """kill, a closed terminal and Ctrl-C stop a run as Ctrl-C does: temporary files removed."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    # Python leaves SIGINT ignored when it starts ignored (a background job of a script); a
    # run told to stop with SIGINT must stop cleanly all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _default_backend(device, tta: TTAConfig | None, jobs: list, counts: list, say) -> str:
    backend = default_backend(device, tta is not None, jobs, counts)
    if backend == "compile":
        say("backend: compile (the default for long videos on a CPU: 1.5–2× faster after a "
            "first frame that compiles; --backend torch to skip that)")  # fmt: skip
    return backend


def _where(written: list) -> str:
    """Where the outputs went: the file, the folder that holds them all, or beside each input."""
    if len(written) == 1:
        return str(written[0].target)
    if written and all(job.target.parent == job.sources[0].parent for job in written):
        return "beside the inputs"
    folders = [str(job.target.parent) for job in written]
    return os.path.join(os.path.commonpath(folders), "") if folders else "nowhere"


def _finish(summary, jobs: list, output: str | None, quiet: bool, engine: str) -> None:
    """The closing line (items, frames, rate, the engine that ran, where they went); exit
    status 1 if any failed."""
    if not quiet and summary.items:
        fps_done = summary.frames / summary.seconds if summary.seconds else 0.0
        written = [job for job in jobs if str(job.sources[0]) not in dict(summary.failed)]
        click.echo(f"{summary.items} item(s), {summary.frames} frame(s) in {summary.seconds:.1f} s "
                   f"({fps_done:.2f} fps, {engine}) → {output or _where(written)}")  # fmt: skip
    if summary.failed:
        if len(jobs) > 1:  # with one input, its error line said it all
            click.echo(f"{len(summary.failed)} of {len(jobs)} inputs failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
