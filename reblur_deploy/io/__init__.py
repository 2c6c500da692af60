"""Reading and writing media. Images here; video (PyAV) joins with reblur-run."""

from .images import IMAGE_SUFFIXES, ImageMetadata, read_image, read_metadata, write_image
from .video import (
    VIDEO_SUFFIXES,
    Frame,
    VideoInfo,
    VideoWriter,
    is_video,
    probe_video,
    read_frames,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageMetadata",
    "read_image",
    "read_metadata",
    "write_image",
]
__all__ += [
    "VIDEO_SUFFIXES",
    "Frame",
    "VideoInfo",
    "VideoWriter",
    "is_video",
    "probe_video",
    "read_frames",
]
