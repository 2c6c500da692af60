"""Reading and writing media. Images here; video (PyAV) joins with reblur-run."""

from .images import IMAGE_SUFFIXES, read_image, write_image
from .video import (
    VIDEO_SUFFIXES,
    Frame,
    VideoInfo,
    VideoWriter,
    is_video,
    probe_video,
    read_frames,
)

__all__ = ["IMAGE_SUFFIXES", "read_image", "write_image"]
__all__ += [
    "VIDEO_SUFFIXES",
    "Frame",
    "VideoInfo",
    "VideoWriter",
    "is_video",
    "probe_video",
    "read_frames",
]
