"""Media in and out: image files, video files, and arrays ↔ the networks' float tensors."""

from .arrays import array_to_tensor, swap_red_blue, tensor_to_array
from .images import (
    IMAGE_SUFFIXES,
    ImageMetadata,
    is_image,
    read_image,
    read_metadata,
    write_image,
)
from .video import (
    VIDEO_SUFFIXES,
    Frame,
    VideoInfo,
    VideoSettings,
    VideoWriter,
    is_video,
    probe_video,
    read_frames,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Frame",
    "ImageMetadata",
    "VideoInfo",
    "VideoSettings",
    "VideoWriter",
    "array_to_tensor",
    "is_image",
    "is_video",
    "probe_video",
    "read_frames",
    "read_image",
    "read_metadata",
    "swap_red_blue",
    "tensor_to_array",
    "write_image",
]
