"""Reading and writing media. Images here; video (PyAV) joins with reblur-run."""

from .images import IMAGE_SUFFIXES, read_image, write_image

__all__ = ["IMAGE_SUFFIXES", "read_image", "write_image"]
