"""Timing and peak memory of a block of work, as every section measures them: medians of
repeated calls after a warm-up (CUDA timings synchronise the device); peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and, on the CPU, the largest increase of the
process's anonymous resident memory (sampled every 2 ms), both from before the warm-up: an
engine allocates its buffers and arenas in its first call and reuses them after, so memory
measured from after the warm-up would show almost nothing.

Anonymous memory, not the whole resident set: the pages of mapped files (torch's and
OpenCV's libraries) come and go with the page cache, and on these VMs the kernel's DAMON
``pageout`` scheme evicts cold ones at any moment, so a 64 MiB allocation once read as a peak of
nothing. And before a CPU measurement the C heap gives its free pages back (``malloc_trim``):
freed memory still resident from earlier work would otherwise be reused without raising it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere a
    no-op)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the largest increase of the anonymous
    resident memory on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: float | None = None

    @staticmethod
    def _rss() -> int | None:
        """Anonymous resident bytes: statm's resident less its shared (file-backed) pages."""
        try:
            with open("/proc/self/statm") as f:
                fields = f.read().split()
            return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        release_free_memory()
        self._base = self._rss()
        self._max = self._base
        self._stop = threading.Event()
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            rss = self._rss()
            if rss is not None and rss > self._max:
                self._max = rss

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        if self._base is None:
            return
        self._stop.set()
        self._thread.join()
        rss = self._rss()
        self._max = max(self._max, rss or 0)
        self.peak_mib = (self._max - self._base) / 2**20


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1):
    """Median seconds of ``repeats`` calls after ``warmup`` calls, and the peak memory (MiB)
    of all of them, measured from before the first (see the module docstring)."""
    sync(device)
    gc.collect()
    times = []
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            fn()
        sync(device)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times), memory.peak_mib


def interleaved_ratio(base: Callable[[], object], other: Callable[[], object], rounds: int) -> dict:
    """``base``'s time over ``other``'s, from rounds of one call of each (after a warm-up of
    both), the two taking turns to go first: the median of the per-round ratios, their range,
    and each side's median seconds. A shared VM's speed drifts by tens of percent within
    seconds, which separate medians of the two would take for a difference between them; and
    the call that goes second finds the caches as the first left them (CPU callables: nothing
    to synchronise)."""
    base(), other()
    ratios, base_s, other_s = [], [], []

    def seconds(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for i in range(rounds):
        if i % 2:
            other_s.append(seconds(other))
            base_s.append(seconds(base))
        else:
            base_s.append(seconds(base))
            other_s.append(seconds(other))
        ratios.append(base_s[-1] / other_s[-1])
    return {"rounds": rounds, "median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios), "base_s": statistics.median(base_s),
            "other_s": statistics.median(other_s)}  # fmt: skip
