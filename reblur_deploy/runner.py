"""What ``reblur-run`` does, callable from Python: find the inputs, plan where every output
goes, deblur, and write each result atomically, one bad input never stopping the others.

Outputs: with ``output`` unset, ``photo.png`` → ``photo_deblurred.png`` beside it and a folder
``shots/`` → ``shots_deblurred/`` beside it (same file names inside). ``output`` names a file
(one input), a folder (any number of inputs; same file names inside), or a video file when the
input is a folder of frames. Existing outputs are refused unless ``overwrite``; an input is
never overwritten, whatever the options.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import check_name, check_writable, write_bytes_atomic
from .backends.eager import compile_available
from .errors import ConfigError, InputError, ReblurError
from .io import (
    VideoSettings,
    VideoWriter,
    is_image,
    is_video,
    probe_video,
    read_frames,
    read_image,
    read_metadata,
    write_image,
)
from .io.images import read_header
from .io.video import TruncatedVideoError
from .losses import blur_score
from .pipeline import Deblurrer

GLOB_CHARS = set("*?[")


@dataclass
class Job:
    """One output: an image, a video, or a video made from a folder of frames."""

    kind: str  # "image" | "video" | "frames"
    sources: list[Path]
    target: Path
    frames: int = 1


@dataclass
class RunOptions:
    output: str | None = None
    overwrite: bool = False
    side_by_side: bool = False
    start: int = 0
    end: int | None = None
    allow_truncated: bool = False  # a truncated or corrupt video: write the frames before it
    fps: float = 30.0
    video: VideoSettings = field(default_factory=VideoSettings)  # how videos are encoded
    quality: int = 95
    skip_existing: bool = False
    shard: tuple[int, int] = (0, 1)
    report: str | None = None
    # TTA of videos: True the video mode (TTAConfig.for_video), False per-frame as configured,
    # None (auto) the video mode unless the configuration already says carry or crop
    tta_video: bool | None = None


@dataclass
class Summary:
    items: int = 0
    frames: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    report: list[dict[str, Any]] = field(default_factory=list)


OUTPUT_SUFFIX = "_deblurred"  # of outputs written beside their input


def _is_media(path: Path) -> bool:
    return is_image(path) or is_video(path)


def _media_in(folder: Path) -> list[Path]:
    return _without_outputs(p for p in folder.iterdir() if _is_media(p))


def _without_outputs(paths: Iterable[Path]) -> list[Path]:
    """Sorted media paths, less the ``X_deblurred`` outputs of an earlier run beside their
    input ``X`` (a folder or glob run must not deblur its own earlier results)."""
    paths = sorted(paths)
    stems = {(p.parent, p.stem) for p in paths}
    return [
        p
        for p in paths
        if not (
            p.stem.endswith(OUTPUT_SUFFIX) and (p.parent, p.stem[: -len(OUTPUT_SUFFIX)]) in stems
        )
    ]


def _beside(path: Path) -> Path:
    """The output written beside its input: photo.jpg → photo_deblurred.jpg."""
    return path.with_name(f"{path.stem}{OUTPUT_SUFFIX}{path.suffix}")


def plan_jobs(specs: Iterable[str], options: RunOptions) -> list[Job]:
    """Turn paths, folders and globs into jobs with checked, unique output paths."""
    specs = list(specs)
    if not specs:
        raise ConfigError("no input given")
    output = Path(options.output) if options.output else None
    into_folder = output is not None and (output.is_dir() or options.output.endswith(os.sep))
    jobs: list[Job] = []
    for spec in specs:
        jobs += _spec_jobs(spec, output, into_folder, single=len(specs) == 1)
    for job in jobs:
        check_name(job.target)  # before any look at it: the OS refuses to look
    _check_output_names_folder(output, jobs)
    _check_targets(jobs)
    return _this_shard(jobs, options)


def _spec_jobs(spec: str, output: Path | None, into_folder: bool, single: bool) -> list[Job]:
    """The jobs of one input: a folder, a file or a glob (``single``: the only input)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if single and output is not None and is_video(output):
            return [_frames_job(path, output)]
        media = _media_in(path)
        if not media:
            raise InputError(f"{path} holds no images or videos")
        folder = output if output is not None else path.with_name(f"{path.name}{OUTPUT_SUFFIX}")
        return [_job(p, folder / p.name) for p in media]
    if path.is_file():
        if output is None:
            return [_job(path, _beside(path))]
        return [_job(path, output / path.name if into_folder or not single else output)]
    if GLOB_CHARS & set(spec):
        matches = (Path(p) for p in glob.glob(os.path.expanduser(spec)))
        media = _without_outputs(p for p in matches if p.is_file() and _is_media(p))
        if not media:
            raise InputError(f"no images or videos match {spec!r}")
        return [_job(p, output / p.name if output else _beside(p)) for p in media]
    raise InputError(f"no such file or folder: {spec}")


def _frames_job(folder: Path, output: Path) -> Job:
    """One video made from the image frames of ``folder``."""
    frames = [p for p in _media_in(folder) if is_image(p)]
    if not frames:
        raise InputError(f"{folder} holds no image frames to make {output} from")
    return Job("frames", frames, output, len(frames))


def _check_output_names_folder(output: Path | None, jobs: list[Job]) -> None:
    """Several outputs go into a folder; a name with a media suffix (or an existing file) is
    surely meant as one file, not as the folder to create."""
    if output is None or output.is_dir() or all(job.target == output for job in jobs):
        return
    if output.exists() or _is_media(output):
        raise ConfigError(
            f"{output} names one file, but there are {len(jobs)} outputs: name a folder"
        )


def _this_shard(jobs: list[Job], options: RunOptions) -> list[Job]:
    """This process's share of ``jobs`` (``options.shard``), its outputs checked as writable."""
    index, count = options.shard
    mine = jobs[index::count]
    # Only this shard's outputs: other processes may already be writing theirs.
    if options.skip_existing and not options.overwrite:
        mine = [job for job in mine if not job.target.exists()]
    for job in mine:
        if job.target.exists() and not options.overwrite:
            raise ConfigError(
                f"{job.target} exists; refusing to overwrite it (use --overwrite, or "
                "--skip-existing to do only what is missing)"
            )
        check_writable(job.target)
    return mine


def _job(source: Path, target: Path) -> Job:
    if is_video(source):
        return Job("video", [source], target, 0)
    if is_image(source):
        return Job("image", [source], target, 1)
    raise InputError(f"{source}: not a supported image or video file")


def _check_targets(jobs: list[Job]) -> None:
    inputs = {p.resolve() for job in jobs for p in job.sources}
    seen: set[Path] = set()
    for job in jobs:
        target = job.target.resolve()
        if target in inputs:
            raise ConfigError(f"{job.target} is an input; refusing to overwrite an input")
        if target in seen:
            raise ConfigError(f"two inputs would both be written to {job.target}")
        seen.add(target)
        expected_video = job.kind in ("video", "frames")
        if is_video(job.target) != expected_video:
            kind = "a video" if expected_video else "an image"
            raise ConfigError(f"{job.target}: the output of {job.sources[0].name} must be {kind}")


def run_jobs(
    deblurrer: Deblurrer,
    jobs: list[Job],
    options: RunOptions,
    progress: Callable[[int], None] = lambda n: None,
    log: Callable[[str], None] = print,
) -> Summary:
    """Process every job; failures are logged and collected, not raised (but Ctrl-C is)."""
    runner = _Runner(deblurrer, options, progress, log)
    start = time.perf_counter()
    for job in jobs:
        runner.run_one(job)
    runner.summary.seconds = time.perf_counter() - start
    if options.report:
        write_report(Path(options.report), runner.summary)
    return runner.summary


# Compiling the network (torch.compile, once per frame size) cost 28 s on the 2-core development
# CPU (Intel Xeon with AMX). Against eager in NCHW it saved 0.36 s per 720p frame and broke even
# after 80 frames; against eager in channels-last (the default since 2026-12-05) it saves
# 0.036 s (unet-lite, 720p: 5.39 → 6.69 frames/s, within 1/255) and breaks even after about
# 780 frames of 720p, a number of pixels. The default compiles from 1,500, so that it clearly pays.
COMPILE_PIXELS = 1500 * 1280 * 720


def _frame_pixels(job: Job) -> int | None:
    try:
        if job.kind == "video":
            info = probe_video(job.sources[0])
            return info.width * info.height
        height, width = read_image(job.sources[0]).shape[:2]
        return height * width
    except ReblurError:
        return None  # reported properly when the job runs


def default_backend(device, tta: bool, jobs: list[Job], counts: list[int | None]) -> str:
    """reblur-run's engine when none is named: on a CPU, plain inference of videos of at least
    ``COMPILE_PIXELS`` pixels in all runs compiled (after a first frame that compiles, the
    fastest path within 1/255 of eager float32 there, docs/BENCHMARKS.md); everything else
    ``auto`` (ONNX Runtime on a cached graph without TTA, else eager torch)."""
    if device.type != "cpu" or tta or not compile_available(device):
        return "auto"
    if not all(job.kind in ("video", "frames") for job in jobs) or None in counts:
        return "auto"
    sizes = [_frame_pixels(job) for job in jobs]
    if None in sizes:
        return "auto"
    pixels = sum(n * size for n, size in zip(counts, sizes, strict=True))  # type: ignore[operator]
    return "compile" if pixels >= COMPILE_PIXELS else "auto"


def uses_video_mode(deblurrer: Deblurrer, job: Job, options: RunOptions) -> bool:
    """Whether ``job`` runs TTA in the video mode (see ``RunOptions.tta_video``)."""
    if job.kind not in ("video", "frames") or deblurrer.tta is None:
        return False
    if options.tta_video is not None:
        return options.tta_video
    return deblurrer.tta.carry is None and deblurrer.tta.crop is None


class _Runner:
    def __init__(self, deblurrer: Deblurrer, options: RunOptions, progress, log):
        self.deblurrer, self.options = deblurrer, options
        self.progress, self.log = progress, log
        self.summary = Summary()

    def run_one(self, job: Job) -> None:
        """One job into the summary; its failure is logged and collected, not raised."""
        deblurrer = self.deblurrer
        deblurrer.reset()  # TTA carry-over never crosses from one input to the next
        deblurrer.video_mode(uses_video_mode(deblurrer, job, self.options))
        try:
            self.summary.frames += self.run(job)
            self.summary.items += 1
        except ReblurError as e:
            self.summary.failed.append((str(job.sources[0]), str(e)))
            self.log(f"error: {e}")

    def run(self, job: Job) -> int:
        source, options = job.sources[0], self.options
        if job.kind == "image":
            return self.run_image(source, job.target)
        if job.kind == "frames":
            first = read_image(source)
            if first.ndim != 3 or first.shape[2] != 3 or first.dtype not in (np.uint8, np.uint16):
                raise InputError(
                    f"{source}: video frames must be 8- or 16-bit RGB, got {first.shape} "
                    f"{first.dtype}"
                )
            fps = Fraction(options.fps).limit_denominator(1001)
            h, w = first.shape[:2]
            writer = self.writer(job.target, fps, w, h, bit_depth=8 * first.itemsize)
            frames = ((i, read_image(p), None) for i, p in enumerate(job.sources))
            return self.encode_all(job, frames, writer)
        info = probe_video(source)
        # Audio follows the frames actually written (start/end range included); colours keep
        # the input's matrix and range so that nothing shifts.
        writer = self.writer(
            job.target, info.fps, info.width, info.height, time_base=info.time_base,
            rotation=info.rotation, audio_from=source if info.has_audio else None, color_from=info,
            bit_depth=info.bit_depth,
        )  # fmt: skip
        decoded = read_frames(source, options.start, options.end, keep_depth=True,
                              allow_truncated=options.allow_truncated)  # fmt: skip
        frames = ((f.index, f.rgb, f.pts) for f in decoded)
        try:
            done = self.encode_all(job, frames, writer)
        except TruncatedVideoError as e:
            raise TruncatedVideoError(f"{e}; nothing was written (--allow-truncated writes the "
                                      "frames before the damage)") from None  # fmt: skip
        if options.end is not None and options.start + done < options.end:
            self.log(f"warning: {source} ends after frame {options.start + done - 1}; "
                     f"--end {options.end} is past its end")  # fmt: skip
        return done

    def run_image(self, source: Path, target: Path) -> int:
        """One image, its memory planned from the file's header before decoding it (a frame
        that cannot fit is refused before it takes any), the input let go before encoding."""
        header = read_header(source)
        if header is not None:
            self.deblurrer.plan_frame(header.height, header.width, header.channels,
                                      header.itemsize, pending=header.nbytes)  # fmt: skip
        image = read_image(source)
        start = time.perf_counter()
        # A frame deblurred in tiles goes into its own array when nothing reads the input
        # afterwards (a report, side by side, a GPU out-of-memory retry): one frame held, not two.
        o = self.options
        in_place = not (o.report or o.side_by_side) and self.deblurrer.device.type == "cpu"
        (out,) = self.deblur([image], in_place)
        self.record(source, 0, image, out, time.perf_counter() - start)
        result = self.combine(image, out)
        del image, out  # hold as few frames as possible
        write_image(target, result, overwrite=o.overwrite, metadata=read_metadata(source),
                    quality=o.quality, consume=True)  # fmt: skip
        self.progress(1)
        return 1

    def writer(self, target: Path, fps: Fraction, width: int, height: int, **kwargs) -> VideoWriter:
        o = self.options
        width *= 2 if o.side_by_side else 1
        return VideoWriter(target, fps, width, height, settings=o.video, overwrite=o.overwrite,
                           **kwargs)  # fmt: skip

    def encode_all(self, job: Job, frames, writer: VideoWriter) -> int:
        """Deblur (index, rgb, pts) frames in batches and encode them in order; the writer
        renames its file only when everything succeeded."""
        done, batch = 0, []
        # TTA adapts frame by frame anyway: batches would only delay the progress updates.
        tta = self.deblurrer.tta_config
        size = 1 if tta is not None and not tta.joint else self.deblurrer.batch_size
        try:
            with writer:
                for item in frames:
                    batch.append(item)
                    if len(batch) == size:
                        done += self.encode(job.sources[0], batch, writer)
                        batch = []
                if batch:
                    done += self.encode(job.sources[0], batch, writer)
                if done == 0:
                    raise InputError(f"{job.sources[0]}: no frames in the requested range")
        except KeyboardInterrupt:
            self.log(f"interrupted after {done} frame(s) of {job.sources[0]}; "
                     f"nothing was written to {job.target}")  # fmt: skip
            raise
        finally:
            # Close the decoder now (its threads stop here), not at interpreter exit, where a
            # threaded FFmpeg decoder finalised late can hang an interrupted run.
            frames.close()
        return done

    def encode(self, source: Path, batch: list[tuple], writer: VideoWriter) -> int:
        images = [item[1] for item in batch]
        start = time.perf_counter()
        outputs = self.deblur(images)
        seconds = (time.perf_counter() - start) / len(batch)
        for (index, image, pts), out in zip(batch, outputs, strict=True):
            writer.write(self.combine(image, out), pts)
            self.record(source, index, image, out, seconds)
        self.progress(len(batch))
        return len(batch)

    def deblur(self, images: list[np.ndarray], in_place: bool = False) -> list[np.ndarray]:
        """Run the Deblurrer (``Deblurrer.run_arrays``); on GPU out-of-memory, retry with
        (smaller) tiles and say so."""
        deblurrer = self.deblurrer
        while True:
            try:
                return deblurrer.run_arrays(images, in_place)
            except RuntimeError as e:  # the CPU allocator's failure is a plain RuntimeError
                if not isinstance(e, torch.OutOfMemoryError) and "can't allocate" not in str(e):
                    raise
                if deblurrer.device.type != "cuda":
                    raise ReblurError(
                        "out of memory: give a smaller --max-memory or --tile than the estimate "
                        "that was used"
                    ) from None
                if deblurrer.tile is not None and deblurrer.tile <= 128:
                    raise ReblurError("out of GPU memory even with 128 px tiles") from None
                deblurrer.tile = 512 if deblurrer.tile is None else deblurrer.tile // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.log(f"out of GPU memory: retrying with --tile {deblurrer.tile}")

    def combine(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.concatenate([image, out], axis=1) if self.options.side_by_side else out

    def record(self, source: Path, index: int, image, out, seconds: float) -> None:
        if not self.options.report:
            return
        entry: dict[str, Any] = {"input": str(source), "frame": index, "seconds": round(seconds, 4)}
        mr = self.deblurrer.reblur
        for key, array in (("blur_before", image), ("blur_after", out)):  # full precision
            entry[key] = None if mr is None else blur_score(array, mr)
        stats = self.deblurrer.tta_stats
        if stats is not None and len(stats.losses) == 1:  # this frame's adaptation
            losses = stats.losses[0]
            entry["tta_steps"] = len(losses)
            entry["tta_loss_first"], entry["tta_loss_last"] = (
                (losses[0], losses[-1]) if losses else (None, None)
            )
        self.summary.report.append(entry)


def write_report(path: Path, summary: Summary) -> None:
    data = {
        "items": summary.items,
        "frames": summary.frames,
        "seconds": round(summary.seconds, 3),
        "failed": [{"input": i, "error": e} for i, e in summary.failed],
        "per_frame": summary.report,
    }
    write_bytes_atomic(path, json.dumps(data, indent=1).encode())


def count_frames(job: Job, options: RunOptions) -> int | None:
    """Frames a job will produce, for progress bars (None when a video cannot say)."""
    if job.kind != "video":
        return job.frames
    try:
        info = probe_video(job.sources[0])
        total = info.frames
    except ReblurError:
        return None  # reported properly when the job runs
    if total is None and info.duration:  # MKV and WebM: no count, but a duration
        total = round(info.duration * info.fps)
    if total is None:
        return None
    end = total if options.end is None else min(options.end, total)
    return max(0, end - options.start)
