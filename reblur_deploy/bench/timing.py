"""Timing and peak memory of a block of work, as every section measures them: medians of
repeated calls after a warm-up (CUDA timings synchronise the device); peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and, on the CPU, the largest increase of the
process's resident set (sampled every 2 ms), both from before the warm-up: an engine allocates
its buffers and arenas in its first call and reuses them after, so memory measured from after
the warm-up would show almost nothing."""

from __future__ import annotations

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


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the CPU resident set's largest increase."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: float | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
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
