"""What a benchmark run measures: ``BenchConfig`` and the frame sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError

SIZES = {"256": (256, 256), "512": (512, 512), "720p": (720, 1280), "1080p": (1080, 1920)}
SECTIONS = ("peak", "histmatch", "resblock", "tta", "video", "drift", "infer", "profile")
HIST_SIZE = (720, 1280)
# the video section's cost of the video mode per frame size: from 360p to 1080p
VIDEO_SIZES = ((360, 640), (720, 1280), (1080, 1920))


@dataclass
class BenchConfig:
    device: str = "auto"
    sections: tuple[str, ...] = SECTIONS
    sizes: tuple[tuple[int, int], ...] | None = None  # None: per device (see resolve)
    batches: tuple[int, ...] = (1, 4, 8)
    steps: int = 5
    tta_lr: float | None = None  # TTAConfig.lr of the video and drift sections (unset: the
    # rate the weights record, else the paper's)
    repeats: int = 3
    compile: bool = True  # include the torch.compile variants (slow to compile on a CPU)
    backends: tuple[str, ...] = ("eager", "compile", "onnxruntime", "tensorrt")
    hist_size: tuple[int, int] = HIST_SIZE
    quick: bool = False
    model: dict = field(default_factory=dict)  # build("unet", **model); the paper's by default
    weights: str | None = None  # a weight file or bundled name: its MD (and MR) instead of model
    video: str | None = None  # the clip of the video section (a video or a folder of frames)
    video_frames: int = 8
    video_sizes: tuple[tuple[int, int], ...] = VIDEO_SIZES
    drift: str | None = None  # the drift section's sequence of frame pairs (DIR/blur, DIR/sharp)
    drift_frames: int = 1000
    log: Callable[[str], None] | None = None

    @classmethod
    def quick_config(cls, **overrides) -> BenchConfig:
        """Small sizes, few repeats: a smoke run that still fills every table."""
        values = {
            "sizes": ((256, 256),),
            "video_sizes": ((180, 320),),
            "batches": (1, 2),
            "steps": 2,
            "repeats": 2,
            "quick": True,
        }
        values.update(overrides)
        return cls(**values)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``"256,720p,1080p,480x640"`` → ((256, 256), (720, 1280), (1080, 1920), (480, 640))."""
    sizes = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in SIZES:
            sizes.append(SIZES[item])
        elif "x" in item:
            h, w = item.split("x")
            sizes.append((int(h), int(w)))
        elif item.isdigit():
            sizes.append((int(item), int(item)))
        else:
            raise ConfigError(f"unknown size {item!r}: use {', '.join(SIZES)} or HxW")
    if not sizes or min(min(s) for s in sizes) < 16:
        raise ConfigError(f"--sizes needs sizes of at least 16 pixels, got {text!r}")
    return tuple(sizes)


def size_name(size: tuple[int, int]) -> str:
    names = {v: k for k, v in SIZES.items()}
    return names.get(tuple(size), f"{size[0]}x{size[1]}")
