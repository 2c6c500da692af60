"""``reblur-bench``: every speed claim of the project, measured as ratios in one run.

Sections (``--only`` picks some):

* ``peak``: the device's measured peak (a large matmul, fp32 and, on CUDA, bf16), the
  denominator of the "fraction of peak" columns.
* ``histmatch``: histogram matching of a 1280×720 RGB frame: ours (C++ on the CPU, CUDA on a
  GPU, and the pure-torch fallback) against scikit-image (float and uint8 paths) and the exact
  torch reference, with each result's error against the exact reference.
* ``resblock``: MR (the paper's reblurring module) forward + gradient with respect to its input,
  as test-time adaptation uses it: eager (cuDNN / oneDNN) vs ``torch.compile`` vs the fused
  Triton ResBlock (CUDA).
* ``tta``: one TTA step and an N-step TTA of one frame (Algorithm A, full frame and 4×256² crops):
  eager fp32 vs compiled vs (CUDA) compiled + bf16 + fused; seconds, peak memory, compile time.
* ``video``: test-time adaptation of a real clip (``BenchConfig.video``: a video file or a
  folder of frames) as ``reblur-run`` runs it, one Deblurrer per setting over the same frames in
  order: plain inference, per-frame Algorithm A, carry-over on whole frames and the video mode
  (``TTAConfig.for_video``): seconds a frame and its ratio to plain inference, NIQE and the
  share of per-frame Algorithm A's NIQE gain kept, blur score, flicker.
* ``infer``: inference of MD per backend (torch eager in fp32 and bf16 autocast, compiled, ONNX
  Runtime, TensorRT when present) per size and batch: frames per second, peak memory, FLOPs per
  frame (``torch.utils.flop_counter``) and the achieved fraction of the measured fp32 peak.

The networks are the paper's U-Net and MR with random output layers, or with
``BenchConfig(weights=...)`` a trained file's (a bundled name works too).

``run(BenchConfig(...))`` returns a JSON-able dict; ``to_markdown`` renders it. Timings are
medians of ``repeats`` runs after a warm-up (CUDA timings synchronise the device). Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and, on the CPU, the largest increase of the
process's resident set (sampled every 2 ms), both from before the warm-up: an engine allocates
its buffers and arenas in its first call and reuses them after, so memory measured from after
the warm-up would show almost nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import json
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .device import autocast, resolve_device
from .errors import ConfigError

SIZES = {"256": (256, 256), "512": (512, 512), "720p": (720, 1280), "1080p": (1080, 1920)}
SECTIONS = ("peak", "histmatch", "resblock", "tta", "video", "infer")
HIST_SIZE = (720, 1280)


@dataclass
class BenchConfig:
    device: str = "auto"
    sections: tuple[str, ...] = SECTIONS
    sizes: tuple[tuple[int, int], ...] | None = None  # None: per device (see resolve)
    batches: tuple[int, ...] = (1, 4, 8)
    steps: int = 5
    repeats: int = 3
    compile: bool = True  # include the torch.compile variants (slow to compile on a CPU)
    backends: tuple[str, ...] = ("eager", "compile", "onnxruntime", "tensorrt")
    hist_size: tuple[int, int] = HIST_SIZE
    quick: bool = False
    model: dict = field(default_factory=dict)  # build("unet", **model); the paper's by default
    weights: str | None = None  # a weight file or bundled name: its MD (and MR) instead of model
    video: str | None = None  # the clip of the video section (a video or a folder of frames)
    video_frames: int = 8
    log: Callable[[str], None] | None = None

    @classmethod
    def quick_config(cls, **overrides) -> BenchConfig:
        """Small sizes, few repeats: a smoke run that still fills every table."""
        values = {
            "sizes": ((256, 256),),
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


# ---------------------------------------------------------------------------------------------
# measurement helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
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
    _sync(device)
    gc.collect()
    times = []
    with _PeakMemory(device) as memory:
        for _ in range(warmup):
            fn()
        _sync(device)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times), memory.peak_mib


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:
        return None


def _cpuinfo() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text()
    return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bf16_units() -> list[str]:
    """The CPU's bf16 matrix units (bf16 autocast pays off with them): AMX, avx512_bf16."""
    flags = _cpuinfo()
    return [flag for flag in ("amx_bf16", "avx512_bf16") if f" {flag}" in flags]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n×n matrix products (after 2 warm-up products)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def machine_info(device: torch.device) -> dict:
    from . import __version__

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "reblur-deploy": __version__,
            "torch": torch.__version__,
            **{
                name: _version(module)
                for name, module in (
                    ("triton", "triton"),
                    ("onnxruntime", "onnxruntime"),
                    ("tensorrt", "tensorrt"),
                    ("scikit-image", "skimage"),
                    ("numpy", "numpy"),
                )
            },
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["versions"]["cuda"] = torch.version.cuda
        info["versions"]["cudnn"] = torch.backends.cudnn.version()
    return info


# ---------------------------------------------------------------------------------------------
# sections


def bench_peak(device: torch.device, config: BenchConfig) -> dict:
    """Achievable matmul throughput, the best of several runs: the denominator of every
    fraction-of-peak figure."""
    n = 8192 if device.type == "cuda" and not config.quick else 2048
    rows = []
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    for dtype in dtypes:
        flops = matmul_peak(device, dtype, n, max(5, config.repeats))
        rows.append({"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": flops / 1e12})
    return {"rows": rows, "peak_tflops": {r["dtype"]: r["tflops"] for r in rows}}


def _sample_frames(size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """TTA's matching problem on the bundled GOPRO crop scaled to ``size``: a reference like a
    network's initial output L0 (the frame, slightly smoothed: float values) and a source like
    the adapted output LN (L0 sharpened, plus faint noise)."""
    import cv2

    from .io import read_image

    sample = Path(__file__).parent / "assets" / "samples" / "gopro_blur_00_crop.png"
    image = cv2.resize(read_image(sample), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    reference = cv2.GaussianBlur(image.astype(np.float32) / 255, (0, 0), 0.7)
    detail = reference - cv2.GaussianBlur(reference, (0, 0), 1.0)
    noise = np.random.default_rng(seed).normal(0, 0.001, reference.shape).astype(np.float32)
    return (reference + 0.3 * detail + noise).astype(np.float32), reference


def bench_histmatch(device: torch.device, config: BenchConfig) -> dict:
    from skimage.exposure import match_histograms as skimage_match

    from . import kernels
    from .histmatch import (
        TOLERANCE,
        match_histograms,
        match_histograms_binned,
        match_histograms_fast,
    )

    source, reference = _sample_frames(config.hist_size)
    source8 = np.rint(source * 255).astype(np.uint8)
    reference8 = np.rint(reference * 255).astype(np.uint8)

    def tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous().to(dev)

    cpu = torch.device("cpu")
    exact_cpu = match_histograms(tensor(source, cpu), tensor(reference, cpu), exact=True)
    exact8 = match_histograms(tensor(source8, cpu), tensor(reference8, cpu), exact=True)
    repeats = max(3, config.repeats)
    rows = []

    def add(name, dev, dtype, fn, expected=None, bound=None):
        seconds, _ = timed(fn, dev, repeats)
        row = {"implementation": name, "device": dev.type, "input": dtype, "ms": seconds * 1e3}
        if expected is not None:
            result = fn()
            if isinstance(result, np.ndarray):
                result = torch.from_numpy(result).permute(2, 0, 1)[None]
            diff = (result.detach().cpu().double() - expected.double()).abs()
            scale = 255.0 if dtype == "float32" else 1.0
            row["max_error_255"] = float(diff.max()) * scale
            row["identical"] = bool((diff == 0).all())
        if bound is not None:
            row["bound_255"] = bound * 255
        rows.append(row)

    add(
        "scikit-image",
        cpu,
        "float32",
        lambda: skimage_match(source, reference, channel_axis=-1),
        exact_cpu,
    )
    add("scikit-image", cpu, "uint8", lambda: skimage_match(source8, reference8, channel_axis=-1))
    devices = [cpu] + ([device] if device.type == "cuda" else [])
    notes = []
    for dev in devices:
        s32, r32 = tensor(source, dev), tensor(reference, dev)
        s8, r8 = tensor(source8, dev), tensor(reference8, dev)
        add(
            "torch exact (exact=True)",
            dev,
            "float32",
            lambda s=s32, r=r32: match_histograms(s, r, exact=True),
        )
        add(
            "match_histograms (default)",
            dev,
            "float32",
            lambda s=s32, r=r32: match_histograms(s, r),
            exact_cpu,
        )
        impls = ["torch"]
        ok, why = kernels.ext_available(dev)
        if ok:
            impls.insert(0, "ext")
        else:
            notes.append(f"ext kernels on {dev.type}: {why}")
        for impl in impls:
            label = {
                "ext": "ours (C++)" if dev.type == "cpu" else "ours (CUDA)",
                "torch": "ours, torch ops",
            }[impl]
            _, bound = match_histograms_binned(s32, r32, implementation=impl)
            add(
                label,
                dev,
                "float32",
                lambda s=s32, r=r32, i=impl: match_histograms_fast(s, r, implementation=i),
                exact_cpu,
                float(bound.max()),
            )
            add(
                f"{label}, no fallback check",
                dev,
                "float32",
                lambda s=s32, r=r32, i=impl: match_histograms_binned(s, r, implementation=i)[0],
            )
            add(
                label,
                dev,
                "uint8",
                lambda s=s8, r=r8, i=impl: match_histograms_fast(s, r, implementation=i),
                exact8,
            )
    base = next(r["ms"] for r in rows if r["implementation"] == "scikit-image")
    for row in rows:
        row["speedup_vs_skimage_float"] = base / row["ms"]
    return {
        "size": f"{config.hist_size[1]}×{config.hist_size[0]} RGB",
        "tolerance_255": TOLERANCE * 255,
        "rows": rows,
        "notes": notes,
    }


def _mr(device: torch.device, config: BenchConfig) -> torch.nn.Module:
    from .models import build

    loaded = _loaded(config)
    if loaded is not None and loaded.reblur is not None:
        mr = loaded.reblur.to(device).eval()
    else:
        torch.manual_seed(0)
        mr = build("reblur").to(device).eval()
        torch.nn.init.normal_(mr.tail.weight, std=0.02)
    mr.requires_grad_(False)
    return mr


def _loaded(config: BenchConfig):
    """The weight file of ``config.weights`` (loaded afresh: TTA changes its modules)."""
    from .weights import load_weights

    return load_weights(config.weights) if config.weights else None


def _model_name(config: BenchConfig) -> str:
    if config.weights:
        return str(config.weights)
    return "unet " + json.dumps(config.model or "paper defaults")


def bench_resblock(device: torch.device, config: BenchConfig) -> dict:
    """MR forward + gradient with respect to the input, as in TTA (MR frozen)."""
    from . import kernels
    from .kernels.resblock import fused_resblocks

    mr = _mr(device, config)
    rows, notes = [], []
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    size = config.sizes[0] if device.type == "cpu" else max(config.sizes)
    for dtype in dtypes:
        x = torch.rand(1, 3, *size, device=device)

        def step(model, x=x, dtype=dtype):
            inp = x.clone().requires_grad_()
            with autocast(device, dtype):
                y = model(inp)
            y.float().sum().backward()
            return inp.grad

        variants = [("eager", mr, None)]
        if config.compile:
            variants.append(("torch.compile", torch.compile(mr, dynamic=False), None))
        ok, why = kernels.triton_available(device)
        if ok and device.type == "cuda":
            variants.append(("fused (Triton)", mr, fused_resblocks))
            if config.compile:
                compiled = torch.compile(mr, dynamic=False)
                variants.append(("fused + torch.compile", compiled, fused_resblocks))
        elif dtype == torch.float32:
            notes.append(f"fused ResBlock not measured: {why}")
        reference = step(mr)
        for name, model, context in variants:
            with context(mr) if context else contextlib.nullcontext():
                grad = step(model)  # warm-up, compile
                seconds, memory = timed(lambda m=model: step(m), device, config.repeats)
            rows.append(
                {
                    "variant": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "size": size_name(size),
                    "ms": seconds * 1e3,
                    "peak_mib": memory,
                    "max_grad_diff": float((grad - reference).abs().max()),
                }
            )
    for row in rows:
        base = next(r["ms"] for r in rows if r["variant"] == "eager" and r["dtype"] == row["dtype"])
        row["speedup_vs_eager"] = base / row["ms"]
    return {"rows": rows, "notes": notes}


def _md(device: torch.device, config: BenchConfig) -> torch.nn.Module:
    from .models import build

    loaded = _loaded(config)
    if loaded is not None:
        return loaded.deblur.to(device).eval()
    torch.manual_seed(0)
    md = build("unet", **config.model).to(device).eval()
    torch.nn.init.normal_(md.tail.weight, std=0.02)
    return md


def bench_tta(device: torch.device, config: BenchConfig) -> dict:
    from .tta import TestTimeAdapter, TTAConfig

    variants = [("eager fp32", {})]
    if config.compile:
        variants.append(("compiled fp32", {"compile": True}))
        if device.type == "cuda":
            variants.append(
                (
                    "compiled + bf16 + fused",
                    {"compile": True, "amp_dtype": torch.bfloat16, "fused": True},
                )
            )
    modes = [("full frame", {}), ("crops 4×256²", {"crop": 256, "crops": 4})]
    rows = []
    for size in config.sizes:
        x = torch.rand(1, 3, *size, device=device)
        for mode, mode_options in modes:
            if mode_options and min(size) <= 256:
                continue  # crops as large as the frame: the same as full frame
            for name, options in variants:
                md, mr = _md(device, config), _mr(device, config)
                row = {"size": size_name(size), "mode": mode, "variant": name}
                adapter = TestTimeAdapter(md, mr, TTAConfig(**mode_options, **options))
                for steps in (1, config.steps):
                    adapter.config.steps = steps  # one adapter: compiled once per shape
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        adapter(x)  # warm-up; compiles the graphs for this shape
                    _sync(device)
                    if steps == 1:
                        row["first_call_s"] = time.perf_counter() - start
                    seconds, memory = timed(lambda a=adapter, x=x: a(x), device, config.repeats, 0)
                    row[f"s_{steps}_steps"] = seconds
                    row["peak_mib"] = max(row.get("peak_mib") or 0, memory or 0)
                row["s_per_step"] = (row[f"s_{config.steps}_steps"] - row["s_1_steps"]) / max(
                    1, config.steps - 1
                )
                rows.append(row)
                del md, mr, adapter
                gc.collect()
    for row in rows:
        base = next(
            r
            for r in rows
            if (r["size"], r["mode"], r["variant"]) == (row["size"], row["mode"], "eager fp32")
        )
        row["speedup_vs_eager"] = base[f"s_{config.steps}_steps"] / row[f"s_{config.steps}_steps"]
    return {"steps": config.steps, "rows": rows}


def _clip_frames(path: str, count: int) -> list[np.ndarray]:
    from .io import IMAGE_SUFFIXES, read_frames, read_image

    folder = Path(path)
    if folder.is_dir():
        names = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [read_image(p) for p in names[:count]]
    return [frame.rgb for frame in read_frames(folder, 0, count)]


def bench_video(device: torch.device, config: BenchConfig) -> dict:
    """Video TTA as ``reblur-run clip --tta N`` runs it (see the module docstring). Seconds a
    frame leave out the first frame, which gets every step in the carried settings; NIQE,
    blur score (under the weights' MR) and flicker (``eval.flicker`` against the inputs) are
    means over all frames."""
    import dataclasses

    from .eval import flicker
    from .losses import blur_score
    from .metrics import niqe
    from .pipeline import Deblurrer, default_weights
    from .tta import TTAConfig

    if not config.video:
        return {"rows": [], "notes": ["not measured: no clip given (--video)"]}
    frames = _clip_frames(config.video, config.video_frames)
    if len(frames) < 3:
        raise ConfigError(f"{config.video}: the video section needs at least 3 frames")
    weights = config.weights or default_weights(device)
    algorithm_a = TTAConfig(steps=config.steps)
    settings = [
        ("no TTA", None),
        (f"per frame, {config.steps} steps", algorithm_a),
        ("carry-over, whole frames", dataclasses.replace(algorithm_a, carry=1)),
        ("video mode", algorithm_a.for_video()),
    ]
    rows = []
    for name, tta in settings:
        deblurrer = Deblurrer(weights, device=device, tta=tta, batch_size=1)
        if tta is None:
            deblurrer(frames[0])  # first-call costs (allocator, oneDNN primitives) stay out
        outputs, seconds = [], []
        for frame in frames:
            start = time.perf_counter()
            outputs.append(deblurrer(frame))
            _sync(device)
            seconds.append(time.perf_counter() - start)
        mr = deblurrer.reblur
        rows.append(
            {
                "setting": name,
                "s_per_frame": statistics.median(seconds[1:]),
                "first_frame_s": seconds[0],
                "niqe": float(np.mean([niqe(y) for y in outputs])),
                "blur_score": float(np.mean([blur_score(y, mr) for y in outputs])),
                "flicker": float(
                    np.mean(
                        [
                            flicker(outputs[i], outputs[i - 1], frames[i], frames[i - 1])
                            for i in range(1, len(frames))
                        ]
                    )
                ),
            }
        )
        del deblurrer
        gc.collect()
    plain, per_frame = rows[0], rows[1]
    gain = plain["niqe"] - per_frame["niqe"]
    notes = []
    if gain <= 0:  # a share of a gain that is not there would read as a result
        notes.append(
            f"per-frame Algorithm A does not lower NIQE on these frames ({gain:+.4f}): "
            "the share of its gain kept is not defined"
        )
    for row in rows:
        row["cost_vs_plain"] = row["s_per_frame"] / plain["s_per_frame"]
        row["niqe_gain_kept"] = (plain["niqe"] - row["niqe"]) / gain if gain > 0 else None
    h, w = frames[0].shape[:2]
    return {
        "clip": str(config.video),
        "frames": len(frames),
        "size": f"{w}×{h}",
        "weights": str(weights),
        "steps": config.steps,
        "rows": rows,
        "notes": notes,
    }


def flops_per_frame(module: torch.nn.Module, size: tuple[int, int], device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return float(counter.get_total_flops())


def bench_infer(device: torch.device, config: BenchConfig, peak: dict | None) -> dict:
    from .backends import create_backend
    from .errors import ReblurError

    md = _md(device, config)
    divisor = md.size_divisor
    rows, notes = [], []
    # Every backend in fp32, and eager PyTorch under bf16 autocast too (on CPUs it pays only
    # with AMX; the table shows whether this machine has it).
    variants = [(name, "fp32") for name in config.backends]
    if "eager" in config.backends:
        variants.insert(1, ("eager", "bf16"))
    for name, precision in variants:
        if name == "compile" and not config.compile:
            continue
        try:
            backend = create_backend(name, md, device, precision)
        except (ReblurError, ImportError) as e:
            notes.append(f"{name}: not measured ({str(e).splitlines()[0]})")
            continue
        for size in config.sizes:
            padded = tuple(-(-s // divisor) * divisor for s in size)
            flops = flops_per_frame(md, padded, device)
            for batch in config.batches:
                x = torch.rand(batch, 3, *padded, device=device)
                try:
                    with torch.inference_mode():
                        seconds, memory = timed(
                            lambda b=backend, x=x: b.infer(x), device, config.repeats
                        )
                except (ReblurError, RuntimeError) as e:
                    notes.append(
                        f"{name} {size_name(size)} batch {batch}: {str(e).splitlines()[0]}"
                    )
                    continue
                fps = batch / seconds
                row = {
                    "backend": name,
                    "precision": precision,
                    "size": size_name(size),
                    "batch": batch,
                    "fps": fps,
                    "peak_mib": memory,
                    "gflops_per_frame": flops / 1e9,
                }
                if peak and "float32" in peak and precision == "fp32":
                    row["fraction_of_fp32_peak"] = flops * fps / (peak["float32"] * 1e12)
                rows.append(row)
        del backend
        gc.collect()
    return {
        "model": _model_name(config),
        "rows": rows,
        "notes": notes,
    }


def run(config: BenchConfig) -> dict:
    device = resolve_device(config.device)
    if config.sizes is None:
        # 720p/1080p TTA takes minutes per step on a CPU: there the default is 256² only
        config.sizes = (
            (SIZES["256"], SIZES["720p"], SIZES["1080p"])
            if device.type == "cuda"
            else (SIZES["256"],)
        )
    unknown = set(config.sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    log = config.log or (lambda message: None)
    report: dict = {
        "machine": machine_info(device),
        "quick": config.quick,
        "sizes": [size_name(s) for s in config.sizes],
        "sections": {},
    }
    peak = None
    for section in SECTIONS:
        if section not in config.sections:
            continue
        log(f"reblur-bench: {section} ...")
        start = time.perf_counter()
        if section == "peak":
            result = bench_peak(device, config)
            peak = result["peak_tflops"]
        elif section == "histmatch":
            result = bench_histmatch(device, config)
        elif section == "resblock":
            result = bench_resblock(device, config)
        elif section == "tta":
            result = bench_tta(device, config)
        elif section == "video":
            result = bench_video(device, config)
        else:
            result = bench_infer(device, config, peak)
        result["seconds"] = time.perf_counter() - start
        report["sections"][section] = result
    return report


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[dict], columns: list[tuple], digits: dict | None = None) -> list[str]:
    """Markdown table of ``rows``; ``columns`` are (key, title); ``digits`` per key (default 2)."""
    digits = digits or {}
    lines = ["| " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = (_fmt(row.get(key), digits.get(key, 2)) for key, _ in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: dict) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    device = m.get("gpu") or f"CPU: {m['cpu']}, {m['cpu_threads']} threads"
    lines = [
        f"### {m['date']}: {device}" + (" (`--quick`)" if report.get("quick") else ""),
        "",
        f"Device `{m['device']}`; {m['platform']}; Python {m['python']}; {versions}. "
        f"Load average at the start: {_fmt(m.get('load_average'))} (other jobs on the machine "
        "slow every row, multi-threaded ones most).",
        "",
    ]
    sections = report["sections"]
    if "peak" in sections:
        lines += ["**Measured peak** (square matmul):", ""]
        lines += _table(
            sections["peak"]["rows"], [("dtype", "dtype"), ("n", "n"), ("tflops", "TFLOP/s")]
        )
        lines.append("")
    if "histmatch" in sections:
        s = sections["histmatch"]
        lines += [
            f"**Histogram matching**, {s['size']}, TTA's case (reference: a frame smoothed "
            f"like a network's output, float values; source: the same sharpened, plus faint "
            f"noise; uint8 rows: both rounded to 8 bits). Error against the exact torch "
            f"reference in 8-bit levels (1/255); ours falls back to exact on planes whose proven "
            f"bound exceeds {s['tolerance_255']:.2f}/255:",
            "",
        ]
        lines += _table(
            s["rows"],
            [
                ("implementation", "implementation"),
                ("device", "device"),
                ("input", "input"),
                ("ms", "ms"),
                ("speedup_vs_skimage_float", "× vs skimage float"),
                ("max_error_255", "max error"),
                ("bound_255", "bound"),
                ("identical", "identical"),
            ],
        )
        lines += [f"- {n}" for n in s.get("notes", [])] + [""]
    if "resblock" in sections:
        s = sections["resblock"]
        lines += ["**MR forward + input gradient** (the paper's MR, 64 channels, 2 ResBlocks):", ""]
        lines += _table(
            s["rows"],
            [
                ("variant", "variant"),
                ("dtype", "dtype"),
                ("size", "size"),
                ("ms", "ms"),
                ("speedup_vs_eager", "× vs eager"),
                ("peak_mib", "peak MiB"),
                ("max_grad_diff", "max |Δ grad|"),
            ],
        )
        lines += [f"- {n}" for n in s.get("notes", [])] + [""]
    if "tta" in sections:
        s = sections["tta"]
        n = s["steps"]
        lines += [
            "**Test-time adaptation** of one frame (paper's U-Net + MR, Algorithm A; seconds "
            "include the final inference and histogram matching):",
            "",
        ]
        lines += _table(
            s["rows"],
            [
                ("size", "size"),
                ("mode", "mode"),
                ("variant", "variant"),
                ("s_per_step", "s / step"),
                ("s_1_steps", "1 step, s"),
                (f"s_{n}_steps", f"{n} steps, s"),
                ("speedup_vs_eager", f"× vs eager ({n} steps)"),
                ("first_call_s", "first call, s"),
                ("peak_mib", "peak MiB"),
            ],
        )
        lines.append("")
    if "video" in sections:
        s = sections["video"]
        if s["rows"]:
            lines += [
                f"**Video TTA** ({s['weights']}, {s['frames']} frames of {s['clip']}, "
                f"{s['size']}; s/frame is the median without the first frame; NIQE gain kept: "
                f"the share of per-frame Algorithm A's NIQE gain over no TTA; flicker: the mean "
                "change between consecutive outputs minus that of the inputs):",
                "",
            ]
            lines += _table(
                s["rows"],
                [
                    ("setting", "setting"),
                    ("s_per_frame", "s/frame"),
                    ("cost_vs_plain", "× plain inference"),
                    ("first_frame_s", "first frame, s"),
                    ("niqe", "NIQE"),
                    ("niqe_gain_kept", "NIQE gain kept"),
                    ("blur_score", "blur score"),
                    ("flicker", "flicker"),
                ],
                {"niqe": 3},
            )
        lines += [f"- {n}" for n in s.get("notes", [])] + [""]
    if "infer" in sections:
        s = sections["infer"]
        lines += [f"**Inference** of MD ({s['model']}):", ""]
        lines += _table(
            s["rows"],
            [
                ("backend", "backend"),
                ("precision", "precision"),
                ("size", "size"),
                ("batch", "batch"),
                ("fps", "frames/s"),
                ("peak_mib", "peak MiB"),
                ("gflops_per_frame", "GFLOP/frame"),
                ("fraction_of_fp32_peak", "fraction of fp32 peak"),
            ],
        )
        lines += [f"- {n}" for n in s.get("notes", [])] + [""]
    return "\n".join(lines).rstrip() + "\n"
