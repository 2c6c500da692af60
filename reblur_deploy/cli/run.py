"""`reblur-run`: deblurring images and videos from the command line."""

from .common import placeholder

main = placeholder("reblur-run", "deblurring images and videos from the command line")
