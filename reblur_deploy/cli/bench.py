"""`reblur-bench`: benchmarking."""

from .common import placeholder

main = placeholder("reblur-bench", "benchmarking")
